package deadletter

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/svckit/svckit/svckit/durable"
	"github.com/svckit/svckit/svckit/durable/crashfs"
)

func TestStorePutListGetDelete(t *testing.T) {
	st, err := NewStore(StoreOptions{Dir: filepath.Join(t.TempDir(), "deadletters")})
	if err != nil {
		t.Fatal(err)
	}
	if l, err := st.List(""); err != nil || len(l) != 0 {
		t.Fatalf("empty store lists %v, %v", l, err)
	}
	big := bytes.Repeat([]byte("abc"), 400_000)
	a, err := st.Put(sampleLetter(big))
	if err != nil {
		t.Fatal(err)
	}
	other := sampleLetter([]byte("short"))
	other.Topic = "payments"
	b, err := st.Put(other)
	if err != nil {
		t.Fatal(err)
	}
	if a.Stored != StoredLocal || a.Size != len(big) || !bytes.Equal(a.Head, big[:HeadLen]) {
		t.Errorf("Put returned %+v", a)
	}
	list, err := st.List("orders")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != a.ID || list[0].Size != len(big) || list[0].Stored != StoredLocal ||
		list[0].Meta != sampleLetter(nil).Meta || !bytes.Equal(list[0].Head, big[:HeadLen]) {
		t.Fatalf("List(orders) = %+v", list)
	}
	if all, _ := st.List(""); len(all) != 2 {
		t.Fatalf("List(\"\") has %d letters, want 2", len(all))
	}
	enc, err := st.Get("orders", a.ID)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Decode(enc)
	if err != nil || !bytes.Equal(l.Original, big) {
		t.Fatalf("Get: %v, original equal %v", err, bytes.Equal(l.Original, big))
	}
	if err := st.Delete("orders", a.ID); err != nil {
		t.Fatal(err)
	}
	if err := st.Delete("orders", a.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Delete: %v, want ErrNotFound", err)
	}
	if _, err := st.Get("orders", a.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Delete: %v, want ErrNotFound", err)
	}
	if list, _ := st.List("payments"); len(list) != 1 || list[0].ID != b.ID {
		t.Errorf("List(payments) = %+v", list)
	}
	// Names from the outside never leave the store's directory.
	for _, bad := range [][2]string{{"..", a.ID}, {".", a.ID}, {"orders", "../../x"}, {"a/b", a.ID}} {
		if _, err := st.Get(bad[0], bad[1]); err == nil {
			t.Errorf("Get(%q, %q) succeeded", bad[0], bad[1])
		}
	}
}

// A dead letter is kept durably when Put returns, and its removal is
// durable when Delete returns: a power cut right after either (crashfs
// keeps only what was fsynced) shows the letter, then not.
func TestStoreSurvivesPowerCut(t *testing.T) {
	cfs := crashfs.New()
	dir := "/data/deadletters"
	st, err := NewStore(StoreOptions{Dir: dir, FS: cfs})
	if err != nil {
		t.Fatal(err)
	}
	in, err := st.Put(sampleLetter([]byte("keep me")))
	if err != nil {
		t.Fatal(err)
	}
	cfs.PowerCut()
	st, _ = NewStore(StoreOptions{Dir: dir, FS: cfs})
	list, err := st.List("orders")
	if err != nil || len(list) != 1 || list[0].ID != in.ID {
		t.Fatalf("after a power cut following Put: %+v, %v", list, err)
	}
	enc, err := st.Get("orders", in.ID)
	if l, derr := Decode(enc); err != nil || derr != nil || string(l.Original) != "keep me" {
		t.Fatalf("after a power cut: Get %v, Decode %v", err, derr)
	}
	if err := st.Delete("orders", in.ID); err != nil {
		t.Fatal(err)
	}
	cfs.PowerCut()
	st, _ = NewStore(StoreOptions{Dir: dir, FS: cfs})
	if list, err := st.List("orders"); err != nil || len(list) != 0 {
		t.Fatalf("after a power cut following Delete: %+v, %v", list, err)
	}
}

// At every point of a Put cut short by a power loss, the store afterwards
// holds either nothing or the whole letter, and no temporary file.
func TestStorePutCrashPoints(t *testing.T) {
	for n := 0; ; n++ {
		cfs := crashfs.New()
		st, _ := NewStore(StoreOptions{Dir: "/d", FS: cfs})
		cfs.StopAfter(n)
		_, perr := st.Put(sampleLetter([]byte("payload")))
		stopped := cfs.Stopped()
		cfs.PowerCut()
		st, _ = NewStore(StoreOptions{Dir: "/d", FS: cfs})
		list, err := st.List("")
		if err != nil {
			t.Fatalf("crash after %d operations: List: %v", n, err)
		}
		for _, in := range list {
			if in.Reason == "" || in.Size != len("payload") {
				t.Fatalf("crash after %d operations: a partial letter is listed: %+v", n, in)
			}
		}
		if perr == nil && len(list) != 1 {
			t.Fatalf("crash after %d operations: Put returned nil but %d letters survive", n, len(list))
		}
		ents, _ := cfs.ReadDir("/d/orders")
		for _, e := range ents {
			if durable.IsTemp(e.Name()) {
				t.Fatalf("crash after %d operations: temporary file %s left after reopening", n, e.Name())
			}
		}
		if !stopped {
			break // the Put ran to its end: every point was explored
		}
	}
}

func TestStoreListsUnreadableFiles(t *testing.T) {
	dir := t.TempDir()
	st, _ := NewStore(StoreOptions{Dir: dir})
	in, err := st.Put(sampleLetter([]byte("x")))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "orders", in.ID+fileSuffix)
	if err := os.WriteFile(p, []byte("SKDL\x01\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	list, err := st.List("orders")
	if err != nil || len(list) != 1 || list[0].ID != in.ID || list[0].Reason == "" {
		t.Fatalf("List = %+v, %v; want the damaged file listed with why", list, err)
	}
	if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
		t.Fatal("listing removed a damaged file")
	}
}
