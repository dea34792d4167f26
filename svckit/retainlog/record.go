package retainlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"time"
)

const (
	// headerLen is the framing in front of every body: u32 body length, u32 CRC.
	headerLen = 8
	// bodyFixedLen is the part of the body before the data: u64 seq, i64 nanos.
	bodyFixedLen = 16
	// MaxBodyLen bounds the length field. Anything larger is treated as
	// corruption rather than trusted, so that a flipped bit in a length field can
	// neither make Open allocate gigabytes nor hide the records behind it.
	MaxBodyLen = 64 << 20
	// MaxDataLen is the largest Record.Data that Append accepts.
	MaxDataLen = MaxBodyLen - bodyFixedLen
)

// castagnoli is the CRC-32C table. It is written once during package
// initialisation and only read afterwards; crc32 recognises this table and uses
// the CPU's CRC32 instruction, which is why CRC-32C (not IEEE) was chosen.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorrupt marks a record that fails validation: a length outside
// [16, MaxBodyLen], a CRC mismatch, or a sequence number that does not follow
// its predecessor. Errors from DecodeRecord and Read wrap it.
var ErrCorrupt = errors.New("retainlog: corrupt record")

// decodeFault says why decodeRecord rejected its input. It is an int rather
// than an error so that the hot read path and the Open scanner allocate nothing
// and can still report what they found.
type decodeFault int

const (
	faultNone decodeFault = iota
	faultShortHeader
	faultBadLength
	faultShortBody
	faultCRC
)

func (f decodeFault) String() string {
	switch f {
	case faultShortHeader:
		return "short header"
	case faultBadLength:
		return "length out of range"
	case faultShortBody:
		return "short body"
	case faultCRC:
		return "crc mismatch"
	}
	return "ok"
}

// EncodedLen is the number of bytes EncodeRecord appends for data of length n.
func EncodedLen(n int) int { return headerLen + bodyFixedLen + n }

// EncodeRecord appends the framed record to dst and returns the extended slice.
// The layout is u32 BE body length ‖ u32 BE CRC-32C(body) ‖ body, where
// body = u64 BE seq ‖ i64 BE unix nanos ‖ data. The CRC covers the sequence
// number and time too, so a torn or bit-flipped header field is detected just
// like damaged data.
func EncodeRecord(dst []byte, r Record) []byte {
	return encodeRecord(dst, r.Seq, r.Time.UnixNano(), r.Data)
}

func encodeRecord(dst []byte, seq uint64, nanos int64, data []byte) []byte {
	bodyLen := bodyFixedLen + len(data)
	start := len(dst)
	dst = binary.BigEndian.AppendUint32(dst, uint32(bodyLen))
	dst = binary.BigEndian.AppendUint32(dst, 0) // CRC, filled in below
	dst = binary.BigEndian.AppendUint64(dst, seq)
	dst = binary.BigEndian.AppendUint64(dst, uint64(nanos))
	dst = append(dst, data...)
	crc := crc32.Checksum(dst[start+headerLen:], castagnoli)
	binary.BigEndian.PutUint32(dst[start+4:], crc)
	return dst
}

// DecodeRecord decodes the record at the start of b and returns it with the
// number of bytes it occupied. Record.Data aliases b (no copy: replay decodes
// millions of records and must not allocate per record).
//
// If b ends before the record does, the error wraps io.ErrUnexpectedEOF; if the
// bytes are invalid (length out of range, CRC mismatch) it wraps ErrCorrupt.
// It never panics, whatever b holds.
func DecodeRecord(b []byte) (Record, int, error) {
	r, n, fault := decodeRecord(b)
	switch fault {
	case faultNone:
		return r, n, nil
	case faultShortHeader, faultShortBody:
		return Record{}, 0, fmt.Errorf("retainlog: %s (have %d bytes): %w", fault, len(b), io.ErrUnexpectedEOF)
	default:
		return Record{}, 0, fmt.Errorf("%w: %s", ErrCorrupt, fault)
	}
}

// decodeRecord is DecodeRecord without error allocation; the scanner uses the
// fault kind to describe what it truncated.
func decodeRecord(b []byte) (Record, int, decodeFault) {
	if len(b) < headerLen {
		return Record{}, 0, faultShortHeader
	}
	bodyLen := uint64(binary.BigEndian.Uint32(b))
	if bodyLen < bodyFixedLen || bodyLen > MaxBodyLen {
		return Record{}, 0, faultBadLength
	}
	total := headerLen + int(bodyLen)
	if len(b) < total {
		return Record{}, 0, faultShortBody
	}
	body := b[headerLen:total]
	if crc32.Checksum(body, castagnoli) != binary.BigEndian.Uint32(b[4:]) {
		return Record{}, 0, faultCRC
	}
	return Record{
		Seq:  binary.BigEndian.Uint64(body),
		Time: time.Unix(0, int64(binary.BigEndian.Uint64(body[8:]))),
		Data: body[bodyFixedLen:],
	}, total, faultNone
}

// peekBodyLen returns the body length announced by a header, and whether it is
// within bounds; the reader uses it to decide how much to read before decoding.
func peekBodyLen(hdr []byte) (int, bool) {
	n := uint64(binary.BigEndian.Uint32(hdr))
	return int(n), n >= bodyFixedLen && n <= MaxBodyLen
}
