package netsync

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/fxamacker/cbor/v2"
)

// Messages travel as frames: a 4-byte big-endian length, then deterministic CBOR.

// maxFrame bounds a frame: one batch of entries, each at most a 64 MiB value plus
// overhead. Larger frames are a protocol error and end the stream. maxRequest
// bounds the first frame of a request stream, which carries ids and version
// vectors only (tens of thousands of them), so a peer that is not yet authorized
// cannot make the node buffer a batch-sized frame.
const (
	maxFrame   = 80 << 20
	maxRequest = 1 << 20
)

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

func readFrame(r io.Reader, v any) (int, error) { return readFrameMax(r, v, maxFrame) }

// paced is a reader that bounds how long a frame may take (the server's streams):
// frameStart is called before waiting for a frame, bodyStart once its length is
// known.
type paced interface {
	frameStart()
	bodyStart(n int)
}

// readFrameMax reads one frame of at most limit bytes into v. A stream that ends
// inside a frame, or a paced one that stalls, is a protocol error; a stream that
// ends between frames returns io.EOF.
func readFrameMax(r io.Reader, v any, limit int) (int, error) {
	pr, _ := r.(paced)
	if pr != nil {
		pr.frameStart()
	}
	var hdr [4]byte
	if k, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return 0, fmt.Errorf("%w: no frame in time: %v", ErrProtocol, err)
		}
		if k > 0 && errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, fmt.Errorf("%w: truncated frame header", ErrProtocol)
		}
		return 0, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > uint32(limit) {
		return 0, fmt.Errorf("%w: frame of %d bytes, limit %d", ErrProtocol, n, limit)
	}
	if pr != nil {
		pr.bodyStart(int(n))
	}
	b, err := readBody(r, int(n))
	if err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, os.ErrDeadlineExceeded) {
			return 0, fmt.Errorf("%w: truncated frame: %v", ErrProtocol, err)
		}
		return 0, fmt.Errorf("reading frame: %w", err)
	}
	if err := decMode.Unmarshal(b, v); err != nil {
		return 0, fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	return 4 + int(n), nil
}

// readBody reads n bytes, growing the buffer as they arrive instead of trusting
// the announced length: a peer that announces 80 MiB and sends nothing costs
// nothing.
func readBody(r io.Reader, n int) ([]byte, error) {
	b := make([]byte, 0, min(n, 64<<10))
	for len(b) < n {
		if len(b) == cap(b) {
			b = slices.Grow(b, min(len(b), n-len(b)))
		}
		k, err := r.Read(b[len(b):min(n, cap(b))])
		b = b[:len(b)+k]
		if err != nil && len(b) < n {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return b, nil
}
