package boltstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
)

// bbolt's file header, read without mapping the file: a truncated file would
// otherwise fault (SIGBUS) on the first read past its end, deep in bbolt,
// and crash start-up without naming the file.
const (
	boltMagic      = 0xED0CDAED
	boltVersion    = 2
	pageHeaderSize = 16
	metaSumOffset  = 56 // bytes of the meta struct covered by its checksum
	metaSize       = metaSumOffset + 8
)

type boltMeta struct {
	pageSize uint32
	pgid     uint64 // high-water mark: the file must hold this many pages
	txid     uint64
}

// ErrDamaged marks a store file that is not a whole bbolt file.
var ErrDamaged = errors.New("damaged")

// checkHeader reads both meta pages of the file at path and checks that the
// newest valid one describes a file at least as long as the one on disk.
func checkHeader(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	first := make([]byte, pageHeaderSize+metaSize)
	if _, err := io.ReadFull(f, first); err != nil {
		return fmt.Errorf("%w: %d bytes is too short for a bbolt header", ErrDamaged, st.Size())
	}
	var best *boltMeta
	m0, err0 := parseMeta(first[pageHeaderSize:])
	if err0 == nil {
		best = m0
	}
	// The second meta page sits one page in; the page size comes from the
	// first meta when it is valid, else try the common sizes.
	sizes := []int64{4096, 8192, 16384, 65536}
	if m0 != nil {
		sizes = []int64{int64(m0.pageSize)}
	}
	for _, ps := range sizes {
		buf := make([]byte, pageHeaderSize+metaSize)
		if _, err := f.ReadAt(buf, ps); err != nil {
			continue
		}
		if m1, err := parseMeta(buf[pageHeaderSize:]); err == nil && int64(m1.pageSize) == ps {
			if best == nil || m1.txid > best.txid {
				best = m1
			}
			break
		}
	}
	if best == nil {
		return fmt.Errorf("%w: no valid bbolt meta page (%v)", ErrDamaged, err0)
	}
	if want := int64(best.pgid) * int64(best.pageSize); st.Size() < want {
		return fmt.Errorf("%w: truncated to %d of %d bytes", ErrDamaged, st.Size(), want)
	}
	return nil
}

func parseMeta(b []byte) (*boltMeta, error) {
	le := binary.LittleEndian
	if le.Uint32(b[0:]) != boltMagic {
		return nil, errors.New("not a bbolt file")
	}
	if v := le.Uint32(b[4:]); v != boltVersion {
		return nil, fmt.Errorf("bbolt file version %d", v)
	}
	h := fnv.New64a()
	h.Write(b[:metaSumOffset])
	if h.Sum64() != le.Uint64(b[metaSumOffset:]) {
		return nil, errors.New("meta checksum mismatch")
	}
	m := &boltMeta{pageSize: le.Uint32(b[8:]), pgid: le.Uint64(b[40:]), txid: le.Uint64(b[48:])}
	if m.pageSize < 1024 || m.pageSize&(m.pageSize-1) != 0 {
		return nil, fmt.Errorf("odd page size %d", m.pageSize)
	}
	return m, nil
}
