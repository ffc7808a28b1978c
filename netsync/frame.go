package netsync

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/fxamacker/cbor/v2"
)

// Messages travel as frames: a 4-byte big-endian length, then deterministic CBOR.

// maxFrame bounds a frame: one batch of entries, each at most a 64 MiB value plus
// overhead. Larger frames are a protocol error and end the stream.
const maxFrame = 80 << 20

var (
	encMode cbor.EncMode
	decMode cbor.DecMode
)

func init() {
	var err error
	if encMode, err = cbor.CoreDetEncOptions().EncMode(); err != nil {
		panic(err)
	}
	decMode, err = cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		IndefLength:      cbor.IndefLengthForbidden,
		MaxNestedLevels:  8,
		MaxArrayElements: 1 << 20,
		MaxMapPairs:      1 << 10,
	}.DecMode()
	if err != nil {
		panic(err)
	}
}

// ErrProtocol marks a malformed message from a peer.
var ErrProtocol = errors.New("protocol error")

func writeFrame(w io.Writer, v any) error {
	b, err := encMode.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) > maxFrame {
		return fmt.Errorf("frame of %d bytes exceeds the limit", len(b))
	}
	hdr := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(b)), uint32(len(b)))
	_, err = w.Write(append(hdr, b...))
	return err
}

func readFrame(r io.Reader, v any) (int, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxFrame {
		return 0, fmt.Errorf("%w: frame of %d bytes", ErrProtocol, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return 0, fmt.Errorf("%w: truncated frame: %v", ErrProtocol, err)
	}
	if err := decMode.Unmarshal(b, v); err != nil {
		return 0, fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	return 4 + int(n), nil
}
