// Package ids makes resource ids that sort by creation time, so that bbolt keys
// built from them read in the order lists want.
package ids

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"strings"
	"sync"
	"time"
)

// Crockford's base32 alphabet: sorts the same as the bytes it encodes.
const alphabet = "0123456789abcdefghjkmnpqrstvwxyz"

var (
	enc = base32.NewEncoding(alphabet).WithPadding(base32.NoPadding)

	mu     sync.Mutex
	lastMs uint64
	last   [16]byte
)

// New returns prefix + "_" + 26 characters: 48 bits of milliseconds then 80
// random bits. Ids made in the same millisecond by this process still sort in
// the order they were made (the random part is incremented).
func New(prefix string) string {
	ms := uint64(time.Now().UnixMilli())
	mu.Lock()
	b := last
	if ms <= lastMs {
		for i := 15; i >= 6; i-- { // increment the random part
			b[i]++
			if b[i] != 0 {
				break
			}
		}
	} else {
		lastMs = ms
		binary.BigEndian.PutUint16(b[0:2], uint16(ms>>32))
		binary.BigEndian.PutUint32(b[2:6], uint32(ms))
		if _, err := rand.Read(b[6:]); err != nil {
			panic(err) // crypto/rand never fails on supported platforms
		}
		b[6] &= 0x7f // leave room to increment within the millisecond
	}
	last = b
	mu.Unlock()
	// base32 encodes from the most significant bit with a sorted alphabet, so
	// the strings sort like the bytes.
	return prefix + "_" + enc.EncodeToString(b[:])
}

// Valid reports whether s is an id with the given prefix made by New.
func Valid(prefix, s string) bool {
	if !strings.HasPrefix(s, prefix+"_") {
		return false
	}
	rest := s[len(prefix)+1:]
	if len(rest) != 26 {
		return false
	}
	for i := 0; i < len(rest); i++ {
		if strings.IndexByte(alphabet, rest[i]) < 0 {
			return false
		}
	}
	return true
}
