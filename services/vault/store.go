package vault

// Typed accessors for the buckets declared in schema.go. They are the only
// code that knows keys, encodings and the store's calls; handlers run them
// inside the transactions they open and never see a key. Values handed out
// by the store are valid only during its transaction: accessors that return
// one say so, and their callers use it there.

import (
	"bytes"
	"fmt"
	"strconv"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	vaultstorev1 "github.com/backlog/controlplane/gen/go/backlog/vaultstore/v1"
	"github.com/backlog/controlplane/services/kit/store"
)

type secretRecord = vaultstorev1.SecretRecord

// valueField is the field number vaultv1.Secret carries the value in, and
// SecretRecord reserves.
const valueField protowire.Number = 5

// getSecret reads ws's secret called name (matched regardless of case), or
// fails with ErrNotFound.
func getSecret(tx store.ReadTx, ws, name string) (*secretRecord, error) {
	v, err := tx.Get(secretsBucket, secretKey(ws, name))
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, fail(ErrNotFound, "secret %q not found in this workspace", name)
	}
	return decodeSecret(v)
}

// decodeSecret decodes a stored record. Records written as vaultv1.Secret
// decode unchanged (SecretRecord keeps its field numbers); a value field in
// one is dropped here, so that it is never read nor written back.
func decodeSecret(v []byte) (*secretRecord, error) {
	rec := &secretRecord{}
	if err := proto.Unmarshal(v, rec); err != nil {
		return nil, fmt.Errorf("decode secret record: %w", err)
	}
	if u := rec.ProtoReflect().GetUnknown(); len(u) > 0 {
		rec.ProtoReflect().SetUnknown(dropField(u, valueField))
	}
	return rec, nil
}

// dropField returns the encoded fields in b without those numbered num.
func dropField(b []byte, num protowire.Number) []byte {
	var out []byte
	for len(b) > 0 {
		n, _, l := protowire.ConsumeField(b)
		if l < 0 {
			return out // malformed: keep what parsed
		}
		if n != num {
			out = append(out, b[:l]...)
		}
		b = b[l:]
	}
	return out
}

// secretExists reports whether ws has a secret called name (any case).
func secretExists(tx store.ReadTx, ws, name string) (bool, error) {
	v, err := tx.Get(secretsBucket, secretKey(ws, name))
	return v != nil, err
}

// putSecret writes rec under its workspace and name.
func putSecret(tx store.WriteTx, rec *secretRecord) error {
	return store.Put(tx, secretsBucket, secretKey(rec.GetWorkspaceId(), rec.GetName()), rec)
}

// deleteSecret removes ws's secret called name: its record and its sealed
// value.
func deleteSecret(tx store.WriteTx, ws, name string) error {
	key := secretKey(ws, name)
	if err := tx.Delete(secretsBucket, key); err != nil {
		return err
	}
	return tx.Delete(valuesBucket, key)
}

// listSecrets visits ws's secrets in name order, starting after the cursor
// after (nil: from the first), until fn has accepted limit of them (0: no
// limit). It returns the cursor of the next page, or nil when none is left.
func listSecrets(tx store.ReadTx, ws string, after []byte, limit int, fn func(*secretRecord) bool) ([]byte, error) {
	opt := store.ScanOptions{Prefix: workspacePrefix(ws), After: after, Limit: limit}
	return tx.Scan(secretsBucket, opt, func(k, v []byte) (bool, error) {
		rec, err := decodeSecret(v)
		if err != nil {
			return false, fmt.Errorf("secret %q: %w", k, err)
		}
		return fn(rec), nil
	})
}

// listStartIn reports whether a listSecrets position (a page token's) lies
// in ws.
func listStartIn(ws string, after []byte) bool {
	return bytes.HasPrefix(after, workspacePrefix(ws))
}

// sealedValue returns the sealed value of ws's secret called name, or nil
// when it has none. It is valid only during tx.
func sealedValue(tx store.ReadTx, ws, name string) ([]byte, error) {
	return tx.Get(valuesBucket, secretKey(ws, name))
}

// putSealedValue stores the sealed value of ws's secret called name.
func putSealedValue(tx store.WriteTx, ws, name string, sealed []byte) error {
	return tx.Put(valuesBucket, secretKey(ws, name), sealed)
}

// latestDataKey returns the newest data key version of ws and its wrapped
// form (valid only during tx), or 0 when the workspace has none yet.
func latestDataKey(tx store.ReadTx, ws string) (uint32, []byte, error) {
	var ver uint32
	var blob []byte
	opt := store.ScanOptions{Prefix: workspacePrefix(ws), Reverse: true, Limit: 1}
	_, err := tx.Scan(dataKeysBucket, opt, func(k, v []byte) (bool, error) {
		var err error
		if _, ver, err = splitDataKeyKey(k); err != nil {
			return false, err
		}
		blob = v
		return true, nil
	})
	if err != nil {
		return 0, nil, err
	}
	return ver, blob, nil
}

// wrappedDataKey returns version ver of ws's data key, wrapped, or nil when
// there is none. It is valid only during tx.
func wrappedDataKey(tx store.ReadTx, ws string, ver uint32) ([]byte, error) {
	return tx.Get(dataKeysBucket, dataKeyKey(ws, ver))
}

// putDataKey stores version ver of ws's data key, wrapped.
func putDataKey(tx store.WriteTx, ws string, ver uint32, wrapped []byte) error {
	return tx.Put(dataKeysBucket, dataKeyKey(ws, ver), wrapped)
}

// eachDataKey visits every workspace's data keys in key order, starting
// after the cursor after (nil: from the first), until fn has accepted limit
// of them (0: no limit). It returns the cursor to continue from, or nil when
// none is left. wrapped is valid only during fn, and fn must not write to
// the data keys (collect, then write after eachDataKey returns).
func eachDataKey(tx store.ReadTx, after []byte, limit int, fn func(ws string, ver uint32, wrapped []byte) (bool, error)) ([]byte, error) {
	return tx.Scan(dataKeysBucket, store.ScanOptions{After: after, Limit: limit}, func(k, v []byte) (bool, error) {
		ws, ver, err := splitDataKeyKey(k)
		if err != nil {
			return false, err
		}
		return fn(ws, ver, v)
	})
}

// splitDataKeyKey parses a data key's key (see dataKeyKey).
func splitDataKeyKey(k []byte) (string, uint32, error) {
	i := bytes.LastIndexByte(k, '/')
	if i <= 0 {
		return "", 0, fmt.Errorf("malformed data key id %q", k)
	}
	ver, err := strconv.ParseUint(string(k[i+1:]), 16, 32)
	if err != nil || ver == 0 {
		return "", 0, fmt.Errorf("malformed data key id %q", k)
	}
	return string(k[:i]), uint32(ver), nil
}
