package audit

// Signed digests.
//
// A digest vouches for a store's chain up to a position: the service, the
// store's id, the position and hash of the chain head, the legacy set (see
// chain.go) and the time, signed with an Ed25519 key that is kept outside
// the store. Digests are stored in ChainBucket under digest/<seq>, where an
// intruder may delete them but cannot forge or alter one without the key.
// They let verification notice events removed from the end of the chain (up
// to the latest digest), and let a chain whose oldest events were pruned
// start at an event whose previous hash a digest vouches for.

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/backlog/controlplane/services/kit/store"
)

// DefaultDigestInterval is how often a Digester signs the chain head when it moved.
const DefaultDigestInterval = time.Minute

// Digest is one signed statement about a store's chain.
type Digest struct {
	Service      string    `json:"service"`
	StoreID      string    `json:"storeId"`
	Seq          uint64    `json:"seq"`
	Hash         string    `json:"hash"`
	LegacyEvents uint64    `json:"legacyEvents"`
	LegacyHash   string    `json:"legacyHash"`
	Time         time.Time `json:"time"`
	KeyID        string    `json:"keyId"`
	Signature    string    `json:"signature"`
}

func (d *Digest) signed() []byte {
	b := []byte("backlog audit digest v1\x00")
	b = appendStr(b, d.Service)
	b = appendStr(b, d.StoreID)
	b = binary.BigEndian.AppendUint64(b, d.Seq)
	b = appendStr(b, d.Hash)
	b = binary.BigEndian.AppendUint64(b, d.LegacyEvents)
	b = appendStr(b, d.LegacyHash)
	return binary.BigEndian.AppendUint64(b, uint64(d.Time.UnixNano()))
}

// KeyID names a public key: hex of the first 8 bytes of its SHA-256.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// Verify checks d's signature with pub.
func (d *Digest) Verify(pub ed25519.PublicKey) bool {
	sig, err := base64.StdEncoding.DecodeString(d.Signature)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return false
	}
	return ed25519.Verify(pub, d.signed(), sig)
}

func digestKey(seq uint64) []byte { return fmt.Appendf(nil, "%s%020d", digestPrefix, seq) }

// WriteDigest signs the current chain head of db (the store of service) and
// stores the digest, unless one for that position is there already. It
// returns the digest for the head (nil when the store has no chain yet).
func WriteDigest(ctx context.Context, db store.Backend, service string, key ed25519.PrivateKey, now time.Time) (*Digest, error) {
	var out *Digest
	err := db.Update(ctx, func(tx store.WriteTx) error {
		out = nil
		h, err := readHead(tx)
		if err != nil || h == nil {
			return err
		}
		k := digestKey(h.Seq)
		if v, err := tx.Get(ChainBucket, k); err != nil {
			return err
		} else if v != nil {
			d := &Digest{}
			if json.Unmarshal(v, d) == nil && d.Hash == h.Hash && d.Verify(key.Public().(ed25519.PublicKey)) {
				out = d
				return nil
			}
		}
		d := &Digest{Service: service, StoreID: db.Info().ID, Seq: h.Seq, Hash: h.Hash,
			LegacyEvents: h.LegacyEvents, LegacyHash: h.LegacyHash, Time: now.UTC(), KeyID: KeyID(key.Public().(ed25519.PublicKey))}
		d.Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(key, d.signed()))
		b, err := json.Marshal(d)
		if err != nil {
			return err
		}
		out = d
		return tx.Put(ChainBucket, k, b)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Digester writes a store's digests at intervals, and a last one when it stops.
type Digester struct {
	DB       store.Backend
	Service  string
	Key      ed25519.PrivateKey
	Interval time.Duration // default DefaultDigestInterval
	Logger   *zap.Logger
	Now      func() time.Time
}

// Run writes digests until ctx ends, then writes a final one.
func (d *Digester) Run(ctx context.Context) {
	iv := d.Interval
	if iv <= 0 {
		iv = DefaultDigestInterval
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			d.write(fctx)
			cancel()
			return
		case <-t.C:
			d.write(ctx)
		}
	}
}

func (d *Digester) write(ctx context.Context) {
	now := time.Now
	if d.Now != nil {
		now = d.Now
	}
	if _, err := WriteDigest(ctx, d.DB, d.Service, d.Key, now()); err != nil && d.Logger != nil && ctx.Err() == nil {
		d.Logger.Warn("could not write a signed audit digest", zap.String("service", d.Service), zap.Error(err))
	}
}

// SigningKeyFile is the default name of the audit signing key in the data dir.
const SigningKeyFile = "audit-signing.key"

const maxKeyFile = 4096

// LoadOrCreateSigningKey reads the Ed25519 audit signing key at path (PEM
// PKCS#8, mode 0600 or stricter); with create, a missing file is created
// (and its public key written to path+".pub", for verifiers).
func LoadOrCreateSigningKey(path string, create bool) (ed25519.PrivateKey, error) {
	k, err := loadSigningKey(path)
	if err == nil || !create || !errors.Is(err, fs.ErrNotExist) {
		return k, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return loadSigningKey(path) // another process made it first
	}
	if err != nil {
		return nil, fmt.Errorf("audit signing key: %w", err)
	}
	err = pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("audit signing key %s: %w", path, err)
	}
	if err := WritePublicKey(path+".pub", pub); err != nil {
		return nil, err
	}
	return priv, nil
}

func loadSigningKey(path string) (ed25519.PrivateKey, error) {
	b, err := readKeyFile(path, true)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("audit signing key %s: not a PEM \"PRIVATE KEY\" block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("audit signing key %s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("audit signing key %s: not an Ed25519 key", path)
	}
	return priv, nil
}

// WritePublicKey writes pub as a PEM "PUBLIC KEY" file (mode 0644).
func WritePublicKey(path string, pub ed25519.PublicKey) error {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		return fmt.Errorf("audit public key: %w", err)
	}
	return nil
}

// LoadVerifyKey reads the public key verification needs: from a PEM
// "PUBLIC KEY" file, or from the signing key file itself.
func LoadVerifyKey(path string) (ed25519.PublicKey, error) {
	b, err := readKeyFile(path, false)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("audit key %s: no PEM block", path)
	}
	switch blk.Type {
	case "PUBLIC KEY":
		k, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("audit key %s: %w", path, err)
		}
		if pub, ok := k.(ed25519.PublicKey); ok {
			return pub, nil
		}
		return nil, fmt.Errorf("audit key %s: not an Ed25519 key", path)
	case "PRIVATE KEY":
		priv, err := loadSigningKey(path)
		if err != nil {
			return nil, err
		}
		return priv.Public().(ed25519.PublicKey), nil
	}
	return nil, fmt.Errorf("audit key %s: unexpected PEM block %q", path, blk.Type)
}

func readKeyFile(path string, private bool) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("audit signing key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("audit signing key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("audit key %s is not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("audit key %s: %w", path, err)
	}
	if private {
		if perm := fi.Mode().Perm(); perm&0o037 != 0 {
			return nil, fmt.Errorf("audit signing key %s has mode %04o: it must not be writable by its group nor accessible to others (chmod 600 %s)", path, perm, path)
		}
	}
	if len(b) > maxKeyFile {
		return nil, fmt.Errorf("audit key %s is too large", path)
	}
	return b, nil
}
