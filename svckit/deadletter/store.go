package deadletter

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/svckit/svckit/svckit/durable"
)

// Stored says where a dead letter is kept.
type Stored string

const (
	// StoredNSQD: published to "<topic>.dead".
	StoredNSQD Stored = "nsqd"
	// StoredLocal: in a service's local store (nsqd refused it, or did
	// not acknowledge it in time).
	StoredLocal Stored = "local"
)

// Errors of the store.
var (
	ErrNotFound = errors.New("deadletter: no such dead letter")
	ErrBadTopic = errors.New("not a valid NSQ topic name")
)

// HeadLen is how many of the original's first bytes a listing carries, for
// a preview.
const HeadLen = 40

// Info describes a dead letter without its original bytes: one row of a
// listing.
type Info struct {
	Meta
	// ID names the letter where it is kept: a file name in a local store,
	// the NSQ message id in "<topic>.dead".
	ID     string `json:"id"`
	Size   int    `json:"size"` // bytes of the original
	Stored Stored `json:"stored"`
	// Head is the original's first bytes (at most HeadLen).
	Head []byte `json:"head,omitempty"`
}

// StoreOptions configures a Store. Dir is required, so the zero value is
// not usable; a nil FS is the operating system's.
type StoreOptions struct {
	// Dir holds the dead letters, one file each under <Dir>/<topic>/. A
	// service's is <data-dir>/deadletters. Required.
	Dir string
	// FS is the filesystem Dir is on; nil = the operating system's.
	FS durable.FS
}

// Store keeps dead letters in files, each written so that it survives a
// power loss once Put returned (durable.WriteFileAtomic), and removed so
// that the removal does (the directory is fsynced).
//
// It is where a dead letter goes when nsqd will not take it: above nsqd's
// --max-msg-size, or not acknowledged within the Sink's PublishTimeout. A
// service serves its store over HTTP (Register) so that `svckit deadletter`
// lists and requeues these with the ones in nsqd.
type Store struct {
	dir string
	fs  durable.FS
}

// NewStore returns the store in o.Dir. It creates nothing until the first
// Put, and removes temporary files a crash may have left in it (one process
// owns a data directory, so no Put is under way).
func NewStore(o StoreOptions) (*Store, error) {
	if o.Dir == "" {
		return nil, errors.New("dead-letter store: no directory")
	}
	s := &Store{dir: filepath.Clean(o.Dir), fs: durable.Or(o.FS)}
	s.removeTemps()
	return s, nil
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) removeTemps() {
	topics, err := s.fs.ReadDir(s.dir)
	if err != nil {
		return
	}
	for _, t := range topics {
		if !t.IsDir() {
			continue
		}
		d := filepath.Join(s.dir, t.Name())
		ents, err := s.fs.ReadDir(d)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if durable.IsTemp(e.Name()) {
				_ = s.fs.Remove(filepath.Join(d, e.Name()))
			}
		}
	}
}

// topicRE is an NSQ topic name; "." and ".." are refused separately, since
// a topic names a directory here.
var topicRE = regexp.MustCompile(`^[.a-zA-Z0-9_-]+(#ephemeral)?$`)

// idRE is what newID makes: unix nanoseconds (so names sort by time), a
// dash, 12 random hex digits.
var idRE = regexp.MustCompile(`^[0-9]{19}-[0-9a-f]{12}$`)

const fileSuffix = ".dl"

func validTopic(t string) error {
	if len(t) > 64 || !topicRE.MatchString(t) || t == "." || t == ".." {
		return fmt.Errorf("dead-letter store: topic %q: %w", t, ErrBadTopic)
	}
	return nil
}

func (s *Store) path(topic, id string) (string, error) {
	if err := validTopic(topic); err != nil {
		return "", err
	}
	if !idRE.MatchString(id) {
		return "", fmt.Errorf("%w: id %q", ErrNotFound, id)
	}
	return filepath.Join(s.dir, topic, id+fileSuffix), nil
}

func newID(now time.Time) (string, error) {
	var r [6]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", err
	}
	return fmt.Sprintf("%019d-%s", now.UnixNano(), hex.EncodeToString(r[:])), nil
}

// Put keeps l durably and returns its listing entry.
func (s *Store) Put(l Letter) (Info, error) {
	b, err := l.Marshal()
	if err != nil {
		return Info{}, err
	}
	return s.putEncoded(l.Meta, b)
}

// putEncoded keeps b, the encoding of a letter with metadata m.
func (s *Store) putEncoded(m Meta, b []byte) (Info, error) {
	if err := validTopic(m.Topic); err != nil {
		return Info{}, err
	}
	id, err := newID(time.Now())
	if err != nil {
		return Info{}, fmt.Errorf("dead-letter store: making an id: %w", err)
	}
	p, _ := s.path(m.Topic, id)
	if err := durable.WriteFileAtomic(s.fs, p, b); err != nil {
		return Info{}, fmt.Errorf("keeping a dead letter of %s in %s: %w", m.Topic, s.dir, err)
	}
	_, orig, _ := split(b)
	return Info{Meta: m, ID: id, Size: len(orig), Stored: StoredLocal, Head: head(orig)}, nil
}

func head(orig []byte) []byte { return append([]byte(nil), orig[:min(len(orig), HeadLen)]...) }

// List returns the dead letters of topic ("" = every topic), oldest first.
// A file that cannot be read is listed with the reason why, so that it is
// not silently forgotten.
func (s *Store) List(topic string) ([]Info, error) {
	var topics []string
	if topic != "" {
		if err := validTopic(topic); err != nil {
			return nil, err
		}
		topics = []string{topic}
	} else {
		ents, err := s.fs.ReadDir(s.dir)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("listing dead letters in %s: %w", s.dir, err)
		}
		for _, e := range ents {
			if e.IsDir() && validTopic(e.Name()) == nil {
				topics = append(topics, e.Name())
			}
		}
	}
	var out []Info
	for _, t := range topics {
		d := filepath.Join(s.dir, t)
		ents, err := s.fs.ReadDir(d)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("listing dead letters in %s: %w", d, err)
		}
		for _, e := range ents { // sorted by name: by time
			id, ok := strings.CutSuffix(e.Name(), fileSuffix)
			if !ok || !idRE.MatchString(id) {
				continue
			}
			in, err := s.readInfo(filepath.Join(d, e.Name()))
			if err != nil {
				in = Info{Meta: Meta{Topic: t, Reason: fmt.Sprintf("unreadable dead letter file: %v", err)}}
			}
			in.ID, in.Stored = id, StoredLocal
			out = append(out, in)
		}
	}
	return out, nil
}

// readInfo reads a letter's header and metadata, and the first bytes of its
// original: a listing does not read whole originals.
func (s *Store) readInfo(path string) (Info, error) {
	f, err := s.fs.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return Info{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Info{}, err
	}
	hdr := make([]byte, HeaderLen)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		return Info{}, fmt.Errorf("reading the header: %w", err)
	}
	n, err := MetaLen(hdr)
	if err != nil {
		return Info{}, err
	}
	size := int(fi.Size()) - HeaderLen - n
	if size < 0 {
		return Info{}, fmt.Errorf("%w: truncated metadata", ErrNotDeadLetter)
	}
	b := make([]byte, HeaderLen+n+min(size, HeadLen))
	if _, err := f.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return Info{}, err
	}
	m, err := DecodeMeta(b)
	if err != nil {
		return Info{}, err
	}
	return Info{Meta: m, Size: size, Head: b[HeaderLen+n:]}, nil
}

// Get returns the encoded letter (Decode reads it).
func (s *Store) Get(topic, id string) ([]byte, error) {
	p, err := s.path(topic, id)
	if err != nil {
		return nil, err
	}
	b, err := durable.ReadFile(s.fs, p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s/%s", ErrNotFound, topic, id)
	}
	if err != nil {
		return nil, fmt.Errorf("reading dead letter %s/%s: %w", topic, id, err)
	}
	return b, nil
}

// Delete removes a letter durably: when it returns nil, the removal
// survives a power loss (a requeued letter must not come back).
func (s *Store) Delete(topic, id string) error {
	p, err := s.path(topic, id)
	if err != nil {
		return err
	}
	if err := s.fs.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: %s/%s", ErrNotFound, topic, id)
		}
		return fmt.Errorf("deleting dead letter %s/%s: %w", topic, id, err)
	}
	if err := s.fs.SyncDir(filepath.Dir(p)); err != nil {
		return fmt.Errorf("deleting dead letter %s/%s: fsync directory: %w", topic, id, err)
	}
	return nil
}
