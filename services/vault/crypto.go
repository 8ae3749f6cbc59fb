package vault

// Envelope encryption.
//
//   - A key-encryption key (KEK) is 32 random bytes loaded from a file at
//     start. It never touches the store. Its id is a fingerprint, the first
//     8 bytes of HMAC-SHA256(kek, "backlog vault kek id v1").
//   - Each workspace has a random 256-bit data key (DEK), stored wrapped by
//     the KEK with AES-256-GCM:
//
//     wrapped = 0x01 | kek id (8) | nonce (12) | GCM(dek) (32+16)
//     AAD     = "backlog vault data key v1" 0x00 | len16(ws) ws | u32(dek version) | wrapped[0:9]
//
//   - Each secret value is sealed with its workspace's DEK, AES-256-GCM:
//
//     sealed = 0x01 | dek version u32 (4) | nonce (12) | GCM(value) (n+16)
//     AAD    = "backlog vault secret v1" 0x00 | len16(ws) ws | len16(name) name | u64(secret version) | sealed[0:5]
//
// The version bytes say which key opens a blob, so that keys can be
// replaced while old blobs stay readable. The AAD binds a blob to the record
// it belongs to: a ciphertext copied to another secret (or another version of
// the same secret, or another workspace) fails authentication, as does a
// wrapped data key moved to another workspace. Nonces are random: a DEK
// seals few enough values (one per create or value update) that 96-bit
// random nonces are far from collision bounds.

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

const (
	keyLen       = 32
	nonceLen     = 12
	kekIDLen     = 8
	formatV1     = 0x01
	wrappedLen   = 1 + kekIDLen + nonceLen + keyLen + 16
	sealedHeader = 1 + 4 + nonceLen
	maxKEKFile   = 1024
)

type kekID [kekIDLen]byte

func (id kekID) String() string { return "kek-" + hex.EncodeToString(id[:]) }

// kek is a loaded key-encryption key: AES-256-GCM in this process (a key
// file) or inside a PKCS#11 token (see pkcs11.go).
type kek struct {
	id      kekID
	aead    cipher.AEAD
	source  string // for messages: "file PATH" or the token and key label
	release func() // closes the token session pool; nil for a file key
}

// seal encrypts with the key; a token's failure (crypto11 panics on one)
// is an error, never a crash.
func (k *kek) seal(dst, nonce, plaintext, aad []byte) (out []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, fmt.Errorf("key-encryption key %s: encryption failed: %v", k.id, r)
		}
	}()
	return k.aead.Seal(dst, nonce, plaintext, aad), nil
}

func newKEK(key []byte) (*kek, error) {
	if len(key) != keyLen {
		return nil, fmt.Errorf("a key-encryption key is %d bytes, not %d", keyLen, len(key))
	}
	if bytes.Equal(key, make([]byte, keyLen)) {
		return nil, errors.New("the key-encryption key is all zeros")
	}
	aead, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte("backlog vault kek id v1"))
	var id kekID
	copy(id[:], m.Sum(nil))
	return &kek{id: id, aead: aead}, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// LoadKEKFile reads a key-encryption key file: 32 bytes, raw or as 64 hex
// digits (surrounding whitespace ignored). The file must be a regular file
// that neither group nor others may read or write (mode 0600 or 0400).
func LoadKEKFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("key-encryption key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("key-encryption key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("key-encryption key file %s is not a regular file", path)
	}
	// Group read is tolerated: Kubernetes mounts Secret files 0440 when the
	// pod sets fsGroup (kubernetes/kubernetes#57923). Group write and any
	// access for others are not.
	if perm := fi.Mode().Perm(); perm&0o037 != 0 {
		return nil, fmt.Errorf("key-encryption key file %s has mode %04o: it must not be writable by its group nor accessible to others (chmod 600 %s)", path, perm, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKEKFile+1))
	if err != nil {
		return nil, fmt.Errorf("key-encryption key file: %w", err)
	}
	if len(b) == keyLen {
		return b, nil
	}
	if t := strings.TrimSpace(string(b)); len(t) == 2*keyLen {
		if k, err := hex.DecodeString(t); err == nil {
			return k, nil
		}
	}
	return nil, fmt.Errorf("key-encryption key file %s: want %d raw bytes or %d hex digits", path, keyLen, 2*keyLen)
}

// GenerateKEKFile writes a new random key-encryption key to path as 64 hex
// digits and a newline, mode 0600, creating the parent directory (0700) if
// needed. It never overwrites: if path exists it fails with an error that
// matches fs.ErrExist.
func GenerateKEKFile(path string) error {
	if path == "" {
		return errors.New("GenerateKEKFile: no path")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	key := make([]byte, keyLen)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s already exists; refusing to overwrite a key-encryption key: %w", path, fs.ErrExist)
		}
		return err
	}
	_, err = f.WriteString(hex.EncodeToString(key) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

// keyring holds the loaded key-encryption keys. Active wraps new data keys;
// the others only unwrap, until a rewrap retires them. No active key means
// the vault is sealed.
type keyring struct {
	mu     sync.RWMutex
	active *kek
	all    map[kekID]*kek
	gen    uint64 // bumped whenever keys are retired
	// retired keys are kept until close, which releases their token
	// sessions: a request may still be using one.
	retired []*kek
}

func newKeyring() *keyring { return &keyring{all: map[kekID]*kek{}} }

func (r *keyring) sealed() bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.active == nil
}

func (r *keyring) activeKEK() *kek {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.active
}

func (r *keyring) generation() uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.gen
}

func (r *keyring) get(id kekID) *kek {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.all[id]
}

// add loads k; with makeActive it becomes the key that wraps.
func (r *keyring) add(k *kek, makeActive bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if old := r.all[k.id]; old != nil && old != k {
		r.retired = append(r.retired, old)
	}
	r.all[k.id] = k
	if makeActive {
		r.active = k
	}
}

// close releases every loaded key's token sessions.
func (r *keyring) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, k := range r.all {
		if k.release != nil {
			k.release()
		}
	}
	for _, k := range r.retired {
		if k.release != nil {
			k.release()
		}
	}
	r.retired = nil
}

// retire drops every key but the active one and returns their ids.
func (r *keyring) retire() []kekID {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gen++
	var out []kekID
	for id := range r.all {
		if r.active == nil || id != r.active.id {
			out = append(out, id)
			r.retired = append(r.retired, r.all[id])
			delete(r.all, id)
		}
	}
	slices.SortFunc(out, func(a, b kekID) int { return bytes.Compare(a[:], b[:]) })
	return out
}

func appendLen16(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func dataKeyAAD(ws string, version uint32, header []byte) []byte {
	b := []byte("backlog vault data key v1\x00")
	b = appendLen16(b, ws)
	b = binary.BigEndian.AppendUint32(b, version)
	return append(b, header...)
}

func valueAAD(ws, name string, secretVersion int64, header []byte) []byte {
	b := []byte("backlog vault secret v1\x00")
	b = appendLen16(b, ws)
	b = appendLen16(b, name)
	b = binary.BigEndian.AppendUint64(b, uint64(secretVersion))
	return append(b, header...)
}

// dataKey is a workspace's unwrapped data key.
type dataKey struct {
	version uint32
	aead    cipher.AEAD
}

// wrapDataKey wraps key (data key version of ws) with k.
func wrapDataKey(k *kek, ws string, version uint32, key []byte) ([]byte, error) {
	out := make([]byte, 1+kekIDLen+nonceLen, wrappedLen)
	out[0] = formatV1
	copy(out[1:], k.id[:])
	if _, err := rand.Read(out[1+kekIDLen:]); err != nil {
		return nil, err
	}
	header := out[:1+kekIDLen]
	nonce := out[1+kekIDLen:]
	return k.seal(out, nonce, key, dataKeyAAD(ws, version, header))
}

// wrappedBy returns the id of the key that wrapped blob.
func wrappedBy(blob []byte) (kekID, error) {
	var id kekID
	if len(blob) != wrappedLen || blob[0] != formatV1 {
		return id, errors.New("malformed wrapped data key")
	}
	copy(id[:], blob[1:])
	return id, nil
}

// unwrapDataKey opens a wrapped data key with whichever loaded key wrapped it.
func (r *keyring) unwrapDataKey(ws string, version uint32, blob []byte) ([]byte, error) {
	id, err := wrappedBy(blob)
	if err != nil {
		return nil, err
	}
	k := r.get(id)
	if k == nil {
		return nil, fail(ErrKeyMissing, "this workspace's data key is wrapped by key-encryption key %s, which is not loaded: start the vault with that key (as -vault-kek-file or a previous key) to use its secrets", id)
	}
	header := blob[:1+kekIDLen]
	nonce := blob[1+kekIDLen : 1+kekIDLen+nonceLen]
	key, err := k.aead.Open(nil, nonce, blob[1+kekIDLen+nonceLen:], dataKeyAAD(ws, version, header))
	if err != nil {
		return nil, errors.New("wrapped data key failed authentication")
	}
	return key, nil
}

// sealValue encrypts a secret's value for (ws, name, version) under dk.
func sealValue(dk *dataKey, ws, name string, version int64, value []byte) ([]byte, error) {
	out := make([]byte, sealedHeader, sealedHeader+len(value)+dk.aead.Overhead())
	out[0] = formatV1
	binary.BigEndian.PutUint32(out[1:5], dk.version)
	if _, err := rand.Read(out[5:sealedHeader]); err != nil {
		return nil, err
	}
	return dk.aead.Seal(out, out[5:sealedHeader], value, valueAAD(ws, name, version, out[:5])), nil
}

// sealedBy returns the data key version that sealed blob.
func sealedBy(blob []byte) (uint32, error) {
	if len(blob) < sealedHeader+16 || blob[0] != formatV1 {
		return 0, errors.New("malformed ciphertext")
	}
	return binary.BigEndian.Uint32(blob[1:5]), nil
}

// openValue decrypts blob for (ws, name, version) with dk.
func openValue(dk *dataKey, ws, name string, version int64, blob []byte) ([]byte, error) {
	v, err := sealedBy(blob)
	if err != nil {
		return nil, err
	}
	if v != dk.version {
		return nil, errors.New("ciphertext names another data key version")
	}
	out, err := dk.aead.Open(nil, blob[5:sealedHeader], blob[sealedHeader:], valueAAD(ws, name, version, blob[:5]))
	if err != nil {
		return nil, errors.New("ciphertext failed authentication")
	}
	return out, nil
}
