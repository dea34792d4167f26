package crashfs_test

import (
	"errors"
	"io/fs"
	"os"
	"slices"
	"syscall"
	"testing"

	"github.com/svckit/svckit/svckit/durable"
	"github.com/svckit/svckit/svckit/durable/crashfs"
)

// write creates or replaces name with b and fsyncs the file (not its
// directory).
func write(t *testing.T, c *crashfs.FS, name string, b []byte) {
	t.Helper()
	f, err := c.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		t.Fatalf("write %s: %v", name, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", name, err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close %s: %v", name, err)
	}
}

func read(t *testing.T, c *crashfs.FS, name string) string {
	t.Helper()
	b, err := durable.ReadFile(c, name)
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return string(b)
}

func syncDir(t *testing.T, c *crashfs.FS, name string) {
	t.Helper()
	if err := c.SyncDir(name); err != nil {
		t.Fatalf("fsync dir %s: %v", name, err)
	}
}

func mustNotExist(t *testing.T, c *crashfs.FS, name string) {
	t.Helper()
	if _, err := c.Stat(name); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("stat %s after the power cut: err = %v, want it not to exist", name, err)
	}
}

func TestUnsyncedDataLost(t *testing.T) {
	c := crashfs.New()
	write(t, c, "f", []byte("durable"))
	syncDir(t, c, "/")

	f, err := c.OpenFile("f", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("DURABLE and more"), 0); err != nil {
		t.Fatal(err)
	}
	if got := read(t, c, "f"); got != "DURABLE and more" {
		t.Fatalf("before the cut: %q", got)
	}
	c.PowerCut()
	if got := read(t, c, "f"); got != "durable" {
		t.Fatalf("after the cut: %q, want the fsynced %q", got, "durable")
	}
	// A handle opened before the cut is dead, like the process that held it.
	if _, err := f.WriteAt([]byte("x"), 0); !errors.Is(err, crashfs.ErrStopped) {
		t.Fatalf("write through a handle from before the cut: %v, want ErrStopped", err)
	}
}

func TestTruncateNeedsFsync(t *testing.T) {
	c := crashfs.New()
	write(t, c, "f", []byte("0123456789"))
	syncDir(t, c, "/")
	if err := c.Truncate("f", 4); err != nil {
		t.Fatal(err)
	}
	if got := read(t, c, "f"); got != "0123" {
		t.Fatalf("after Truncate: %q", got)
	}
	c.PowerCut()
	if got := read(t, c, "f"); got != "0123456789" {
		t.Fatalf("unsynced truncate survived the cut: %q", got)
	}

	f, err := c.OpenFile("f", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(12); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	c.PowerCut()
	if got := read(t, c, "f"); got != "0123456789\x00\x00" {
		t.Fatalf("fsynced grow lost: %q", got)
	}
}

func TestCreateWithoutDirFsyncLost(t *testing.T) {
	c := crashfs.New()
	// The data is fsynced, but the entry naming it is not.
	write(t, c, "f", []byte("data"))
	if err := c.Mkdir("d", 0o755); err != nil {
		t.Fatal(err)
	}
	c.PowerCut()
	mustNotExist(t, c, "f")
	mustNotExist(t, c, "d")

	write(t, c, "f", []byte("data"))
	syncDir(t, c, "/")
	c.PowerCut()
	if got := read(t, c, "f"); got != "data" {
		t.Fatalf("created and fsynced with its directory: %q", got)
	}
}

func TestRenameWithoutDirFsyncReverted(t *testing.T) {
	c := crashfs.New()
	write(t, c, "state", []byte("old"))
	syncDir(t, c, "/")

	// WriteFileAtomic without its final directory fsync.
	write(t, c, "state.tmp", []byte("new"))
	if err := c.Rename("state.tmp", "state"); err != nil {
		t.Fatal(err)
	}
	if got := read(t, c, "state"); got != "new" {
		t.Fatalf("before the cut: %q", got)
	}
	c.PowerCut()
	if got := read(t, c, "state"); got != "old" {
		t.Fatalf("rename without a directory fsync survived: %q", got)
	}
	mustNotExist(t, c, "state.tmp")
}

func TestRenameWithDirFsyncKept(t *testing.T) {
	c := crashfs.New()
	write(t, c, "state", []byte("old"))
	syncDir(t, c, "/")
	if err := durable.WriteFileAtomic(c, "state", []byte("new")); err != nil {
		t.Fatal(err)
	}
	c.PowerCut()
	if got := read(t, c, "state"); got != "new" {
		t.Fatalf("after WriteFileAtomic and a cut: %q", got)
	}
	mustNotExist(t, c, "state.tmp")
}

func TestRenameIdentityAndRules(t *testing.T) {
	c := crashfs.New()
	write(t, c, "a", []byte("a"))
	fi, err := c.Stat("a")
	if err != nil {
		t.Fatal(err)
	}
	ino := fi.Sys().(crashfs.Sys).Ino
	if ino <= crashfs.RootIno {
		t.Fatalf("inode number %d, want above the root's %d", ino, crashfs.RootIno)
	}
	if err := c.Rename("a", "b"); err != nil {
		t.Fatal(err)
	}
	fi, err = c.Stat("b")
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Sys().(crashfs.Sys).Ino; got != ino {
		t.Fatalf("inode number changed across a rename: %d, was %d", got, ino)
	}

	for _, d := range []string{"d", "e", "e/sub", "empty"} {
		if err := c.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		from, to string
		want     error
	}{
		{"b", "d", syscall.EISDIR},
		{"d", "b", syscall.ENOTDIR},
		{"d", "e", syscall.ENOTEMPTY},
		{"e", "e/sub/x", syscall.EINVAL},
	} {
		if err := c.Rename(tc.from, tc.to); !errors.Is(err, tc.want) {
			t.Errorf("rename %s %s: %v, want %v", tc.from, tc.to, err, tc.want)
		}
	}
	if err := c.Rename("d", "empty"); err != nil {
		t.Errorf("rename a directory over an empty one: %v", err)
	}
	fi, err = c.Stat("empty")
	if err != nil || !fi.IsDir() || fi.Size() == 0 {
		t.Errorf("stat of a directory: %v, %v", fi, err)
	}
}

func TestRemoveWithoutDirFsyncComesBack(t *testing.T) {
	c := crashfs.New()
	write(t, c, "f", []byte("data"))
	syncDir(t, c, "/")
	if err := c.Remove("f"); err != nil {
		t.Fatal(err)
	}
	mustNotExist(t, c, "f")
	c.PowerCut()
	if got := read(t, c, "f"); got != "data" {
		t.Fatalf("removed without a directory fsync: %q after the cut", got)
	}

	if err := c.Remove("f"); err != nil {
		t.Fatal(err)
	}
	syncDir(t, c, "/")
	c.PowerCut()
	mustNotExist(t, c, "f")
}

func TestAppend(t *testing.T) {
	c := crashfs.New()
	write(t, c, "log", []byte("one\n"))
	a, err := c.OpenFile("log", os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.OpenFile("log", os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	w := func(f durable.File, s string) {
		t.Helper()
		if _, err := f.(interface{ Write([]byte) (int, error) }).Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	w(a, "two\n")
	w(b, "three\n") // at the end, not at b's own offset
	w(a, "four\n")
	if got := read(t, c, "log"); got != "one\ntwo\nthree\nfour\n" {
		t.Fatalf("appends: %q", got)
	}
	if _, err := a.WriteAt([]byte("x"), 0); err == nil {
		t.Fatal("WriteAt on an O_APPEND file succeeded; os.File refuses it")
	}

	// Without O_APPEND, Write goes on where it left off.
	f, err := c.OpenFile("seq", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	w(f, "ab")
	w(f, "cd")
	if got := read(t, c, "seq"); got != "abcd" {
		t.Fatalf("sequential writes: %q", got)
	}
	fi, err := c.Stat("seq")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != 0o600 {
		t.Fatalf("mode %v, want the 0600 it was created with", fi.Mode())
	}
	if err := c.Chmod("seq", 0o640); err != nil {
		t.Fatal(err)
	}
	if fi, _ := c.Stat("seq"); fi.Mode() != 0o640 {
		t.Fatalf("mode after chmod %v", fi.Mode())
	}
}

func TestOpenFlags(t *testing.T) {
	c := crashfs.New()
	write(t, c, "f", []byte("data"))
	if _, err := c.OpenFile("f", os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("O_EXCL on an existing file: %v", err)
	}
	if _, err := c.OpenFile("missing", os.O_RDONLY, 0); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("open missing: %v", err)
	}
	if _, err := c.OpenFile("f/x", os.O_RDONLY, 0); !errors.Is(err, syscall.ENOTDIR) {
		t.Fatalf("open under a file: %v", err)
	}
	f, err := c.OpenFile("f", os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("x"), 0); err == nil {
		t.Fatal("write to a read-only handle succeeded")
	}
	if _, err := c.OpenFile("f", os.O_RDWR|os.O_TRUNC, 0); err != nil {
		t.Fatal(err)
	}
	if got := read(t, c, "f"); got != "" {
		t.Fatalf("after O_TRUNC: %q", got)
	}
}

func TestStopAfter(t *testing.T) {
	c := crashfs.New()
	c.StopAfter(2)
	if err := c.Mkdir("d", 0o755); err != nil { // op 1
		t.Fatal(err)
	}
	syncDir(t, c, "/") // op 2
	if c.Stopped() {
		t.Fatal("stopped before the limit")
	}
	if err := c.Mkdir("e", 0o755); !errors.Is(err, crashfs.ErrStopped) {
		t.Fatalf("third operation: %v, want ErrStopped", err)
	}
	if !c.Stopped() {
		t.Fatal("Stopped() = false after a refused operation")
	}
	// Refused without effect; reads keep working.
	mustNotExist(t, c, "e")
	if _, err := c.ReadDir("/"); err != nil {
		t.Fatalf("read after the stop: %v", err)
	}
	if got, want := c.Ops(), 2; got != want {
		t.Fatalf("Ops() = %d, want %d", got, want)
	}
	if got, want := c.Trace(), []string{"mkdir d", "fsync dir /"}; !slices.Equal(got, want) {
		t.Fatalf("Trace() = %q, want %q", got, want)
	}

	c.PowerCut()
	if c.Stopped() {
		t.Fatal("still stopped after the power cut")
	}
	if _, err := c.Stat("d"); err != nil {
		t.Fatalf("d was created and its directory fsynced before the stop: %v", err)
	}
	if err := c.Mkdir("e", 0o755); err != nil {
		t.Fatalf("after the cut the machine runs again: %v", err)
	}
}

// TestStopAfterExploresWriteFileAtomic is how StopAfter is meant to be
// used: stop after every n in turn, cut the power, and check the
// invariant (here: the old or the new contents, never anything else).
func TestStopAfterExploresWriteFileAtomic(t *testing.T) {
	for n := 0; ; n++ {
		c := crashfs.New()
		if err := durable.WriteFileAtomic(c, "d/state", []byte("old")); err != nil {
			t.Fatal(err)
		}
		c.StopAfter(n)
		err := durable.WriteFileAtomic(c, "d/state", []byte("new"))
		stopped := c.Stopped()
		if err == nil && stopped {
			t.Fatalf("n=%d: WriteFileAtomic returned nil although an operation was refused", n)
		}
		c.PowerCut()
		got := read(t, c, "d/state")
		switch {
		case err == nil && got != "new":
			t.Fatalf("n=%d: WriteFileAtomic succeeded, after the cut %q", n, got)
		case got != "old" && got != "new":
			t.Fatalf("n=%d: after the cut %q; trace %q", n, got, c.Trace())
		}
		if !stopped {
			return // the whole write ran within n operations
		}
	}
}

func TestPowerCutConcurrent(t *testing.T) {
	// PowerCut while other goroutines use the FS (as a FUSE server's do);
	// run under -race.
	c := crashfs.New()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 200; i++ {
			f, err := c.OpenFile("f", os.O_RDWR|os.O_CREATE, 0o644)
			if err != nil {
				continue
			}
			_, _ = f.WriteAt([]byte("x"), int64(i))
			_ = f.Sync()
			_ = f.Close()
			_ = c.SyncDir("/")
		}
	}()
	for i := 0; i < 50; i++ {
		c.PowerCut()
	}
	<-done
}
