package crashfs_test

import (
	"errors"
	"io/fs"
	"math/rand/v2"
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

// open opens name with flag or fails the test.
func open(t *testing.T, c *crashfs.FS, name string, flag int) durable.File {
	t.Helper()
	f, err := c.OpenFile(name, flag, 0o644)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	return f
}

// wantNoSpace asserts that err is ENOSPC as the OS reports it.
func wantNoSpace(t *testing.T, what string, err error) {
	t.Helper()
	var pe *fs.PathError
	if !errors.Is(err, syscall.ENOSPC) || !errors.As(err, &pe) {
		t.Fatalf("%s: err = %v (%T), want a *fs.PathError with ENOSPC", what, err, err)
	}
}

func wantUsed(t *testing.T, c *crashfs.FS, want int64) {
	t.Helper()
	if got := c.Used(); got != want {
		t.Fatalf("Used() = %d, want %d", got, want)
	}
}

func TestSpacePartialWrite(t *testing.T) {
	c := crashfs.New()
	wantUsed(t, c, 0)
	c.SetSpace(10)
	f := open(t, c, "f", os.O_RDWR|os.O_CREATE)
	if n, err := f.WriteAt([]byte("012345"), 0); n != 6 || err != nil {
		t.Fatalf("write within the space: %d, %v", n, err)
	}
	wantUsed(t, c, 6)
	// 8 bytes at 4 need 6 more; 4 fit: the write is short, as on a full tmpfs.
	n, err := f.WriteAt([]byte("abcdefgh"), 4)
	wantNoSpace(t, "write beyond the space", err)
	if n != 6 {
		t.Fatalf("short write wrote %d bytes, want the 6 that fit", n)
	}
	if got := read(t, c, "f"); got != "0123abcdef" {
		t.Fatalf("after the short write: %q", got)
	}
	wantUsed(t, c, 10)
	// Full: nothing more, not even into a hole beyond the end.
	for _, off := range []int64{10, 20} {
		if n, err := f.WriteAt([]byte("x"), off); n != 0 {
			t.Fatalf("write at %d on a full disk wrote %d bytes", off, n)
		} else {
			wantNoSpace(t, "write on a full disk", err)
		}
	}
	if fi, _ := f.Stat(); fi.Size() != 10 {
		t.Fatalf("size %d after refused writes, want 10", fi.Size())
	}
	// Overwriting takes no space.
	if n, err := f.WriteAt([]byte("XYZ"), 7); n != 3 || err != nil {
		t.Fatalf("overwrite on a full disk: %d, %v", n, err)
	}
	if err := f.Truncate(11); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("growing truncate on a full disk: %v, want ENOSPC", err)
	}

	// Write (sequential) moves its offset by what it wrote, as write(2) does.
	c.SetSpace(14)
	g := open(t, c, "g", os.O_RDWR|os.O_CREATE)
	w := g.(interface{ Write([]byte) (int, error) })
	n, err = w.Write([]byte("hello"))
	wantNoSpace(t, "sequential write", err)
	if n != 4 {
		t.Fatalf("sequential short write: %d bytes, want 4", n)
	}
	c.SetSpace(-1)
	if _, err := w.Write([]byte("O!")); err != nil {
		t.Fatal(err)
	}
	if got := read(t, c, "g"); got != "hellO!" {
		t.Fatalf("the write after a short one: %q, want it to continue where that ended", got)
	}
	// O_APPEND appends where the file ends.
	a := open(t, c, "g", os.O_WRONLY|os.O_APPEND)
	c.SetSpace(c.Used() + 2)
	n, err = a.(interface{ Write([]byte) (int, error) }).Write([]byte("abc"))
	wantNoSpace(t, "append", err)
	if n != 2 || read(t, c, "g") != "hellO!ab" {
		t.Fatalf("short append: %d bytes, file %q", n, read(t, c, "g"))
	}
}

func TestSpaceLowerAndRaise(t *testing.T) {
	c := crashfs.New()
	write(t, c, "f", make([]byte, 100))
	wantUsed(t, c, 100)
	c.SetSpace(50) // below what is used: allowed
	f := open(t, c, "f", os.O_RDWR)
	if n, err := f.WriteAt([]byte("x"), 100); n != 0 {
		t.Fatalf("grew %d bytes over a limit below the usage", n)
	} else {
		wantNoSpace(t, "grow over the limit", err)
	}
	if err := f.Truncate(80); err != nil { // shrinking still works
		t.Fatal(err)
	}
	wantUsed(t, c, 80)
	if _, err := f.WriteAt([]byte("x"), 80); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("still over the limit: %v, want ENOSPC", err)
	}
	c.SetSpace(90) // raised: the room is there at once
	if n, err := f.WriteAt(make([]byte, 20), 80); n != 10 {
		t.Fatalf("after raising to 90: wrote %d, %v; want 10 and ENOSPC", n, err)
	}
	c.SetSpace(-1)
	if _, err := f.WriteAt(make([]byte, 1000), 90); err != nil {
		t.Fatalf("unlimited again: %v", err)
	}
	wantUsed(t, c, 1090)
}

func TestSpaceMetadataOnFullDisk(t *testing.T) {
	c := crashfs.New()
	write(t, c, "f", []byte("data"))
	c.SetSpace(0)
	if err := c.Mkdir("d", 0o755); err != nil {
		t.Fatal(err)
	}
	e := open(t, c, "d/e", os.O_RDWR|os.O_CREATE|os.O_EXCL)
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := c.Rename("f", "d/f"); err != nil {
		t.Fatal(err)
	}
	syncDir(t, c, "d")
	syncDir(t, c, "/")
	if got := read(t, c, "d/f"); got != "data" {
		t.Fatalf("read on a full disk: %q", got)
	}
	if n, err := e.WriteAt([]byte("x"), 0); n != 0 {
		t.Fatalf("wrote %d bytes with a limit of 0", n)
	} else {
		wantNoSpace(t, "write with a limit of 0", err)
	}
	// What WriteFileAtomic does on a full disk: the write fails, nothing
	// replaced.
	if err := durable.WriteFileAtomic(c, "d/f", []byte("new")); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("WriteFileAtomic on a full disk: %v, want ENOSPC", err)
	}
	if got := read(t, c, "d/f"); got != "data" {
		t.Fatalf("after a failed WriteFileAtomic: %q", got)
	}
	if err := c.Remove("d/e"); err != nil {
		t.Fatal(err)
	}
}

func TestSpaceRemoveFrees(t *testing.T) {
	c := crashfs.New()
	write(t, c, "a", make([]byte, 30))
	write(t, c, "b", make([]byte, 20))
	write(t, c, "c", make([]byte, 10))
	wantUsed(t, c, 60)
	c.SetSpace(60)
	if err := c.Remove("a"); err != nil {
		t.Fatal(err)
	}
	wantUsed(t, c, 30)

	// A file removed while open keeps its space until the last close.
	h1 := open(t, c, "b", os.O_RDONLY)
	h2 := open(t, c, "b", os.O_RDWR)
	if err := c.Remove("b"); err != nil {
		t.Fatal(err)
	}
	wantUsed(t, c, 30)
	if n, err := h2.WriteAt(make([]byte, 40), 20); n != 30 || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write to an unlinked open file: %d, %v; want 30 and ENOSPC", n, err)
	}
	wantUsed(t, c, 60)
	if err := h2.Close(); err != nil {
		t.Fatal(err)
	}
	wantUsed(t, c, 60)
	if err := h1.Close(); err != nil {
		t.Fatal(err)
	}
	wantUsed(t, c, 10)

	// A rename over a file frees the replaced one.
	write(t, c, "d", make([]byte, 5))
	wantUsed(t, c, 15)
	if err := c.Rename("d", "c"); err != nil {
		t.Fatal(err)
	}
	wantUsed(t, c, 5)
	// Closing twice, or a handle of a file that was replaced, frees nothing twice.
	h := open(t, c, "c", os.O_RDONLY)
	write(t, c, "e", make([]byte, 7))
	if err := c.Rename("e", "c"); err != nil {
		t.Fatal(err)
	}
	wantUsed(t, c, 12)
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err == nil {
		t.Fatal("second close succeeded")
	}
	wantUsed(t, c, 7)
}

func TestSpaceTruncateFrees(t *testing.T) {
	c := crashfs.New()
	write(t, c, "f", make([]byte, 40))
	write(t, c, "g", make([]byte, 40))
	c.SetSpace(80)
	if err := c.Truncate("f", 10); err != nil {
		t.Fatal(err)
	}
	wantUsed(t, c, 50)
	g := open(t, c, "g", os.O_RDWR)
	if err := g.Truncate(5); err != nil {
		t.Fatal(err)
	}
	wantUsed(t, c, 15)
	open(t, c, "f", os.O_RDWR|os.O_TRUNC)
	wantUsed(t, c, 5)
	// The freed space can be used again, up to the limit and no further.
	if err := g.Truncate(80); err != nil {
		t.Fatal(err)
	}
	if err := c.Truncate("f", 1); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("truncate over the limit: %v, want ENOSPC", err)
	}
	if fi, _ := c.Stat("f"); fi.Size() != 0 {
		t.Fatalf("a refused truncate changed the size to %d", fi.Size())
	}
	wantUsed(t, c, 80)
}

func TestSpacePowerCut(t *testing.T) {
	c := crashfs.New()
	write(t, c, "f", make([]byte, 10))
	write(t, c, "gone", make([]byte, 30))
	if err := c.Mkdir("d", 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, c, "d/held", make([]byte, 5))
	syncDir(t, c, "d")
	syncDir(t, c, "/")
	c.SetSpace(60)
	f := open(t, c, "f", os.O_RDWR)
	if _, err := f.WriteAt(make([]byte, 10), 10); err != nil { // not fsynced
		t.Fatal(err)
	}
	// Removed without a directory fsync: comes back at the cut.
	if err := c.Remove("gone"); err != nil {
		t.Fatal(err)
	}
	// Created and written without a directory fsync: lost at the cut.
	write(t, c, "new", make([]byte, 15))
	// Removed while open, the removal durable: lost at the cut although
	// nothing closed it.
	h := open(t, c, "d/held", os.O_RDONLY)
	if err := c.Remove("d/held"); err != nil {
		t.Fatal(err)
	}
	syncDir(t, c, "d")
	wantUsed(t, c, 20+15+5)

	c.SetSpace(35)
	c.PowerCut()
	// What is left: f as fsynced (10), gone (30); new and held are gone.
	wantUsed(t, c, 40)
	mustNotExist(t, c, "new")
	mustNotExist(t, c, "d/held")
	// Over the limit, which stays: no growth until something is freed.
	g := open(t, c, "f", os.O_RDWR)
	if _, err := g.WriteAt([]byte("x"), 10); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("growing after the cut, over the limit: %v, want ENOSPC", err)
	}
	// The stale handle neither frees its file twice nor counts.
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	wantUsed(t, c, 40)
	if err := c.Remove("gone"); err != nil {
		t.Fatal(err)
	}
	wantUsed(t, c, 10)
	if n, err := g.WriteAt(make([]byte, 30), 10); n != 25 || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("after freeing: %d, %v; want 25 and ENOSPC", n, err)
	}
}

func TestSpaceStopAfterCounts(t *testing.T) {
	c := crashfs.New()
	f := open(t, c, "f", os.O_RDWR|os.O_CREATE) // op 1
	c.SetSpace(2)
	before := c.Ops()
	if _, err := f.WriteAt([]byte("abc"), 0); !errors.Is(err, syscall.ENOSPC) { // short
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("d"), 5); !errors.Is(err, syscall.ENOSPC) { // nothing written
		t.Fatal(err)
	}
	if err := f.Truncate(9); !errors.Is(err, syscall.ENOSPC) {
		t.Fatal(err)
	}
	// Counted as operations, as without a limit, and traced.
	if got := c.Ops() - before; got != 3 {
		t.Fatalf("%d operations counted for three refused for space, want 3", got)
	}
	want := []string{"create f", "write f 0+3: ENOSPC", "write f 5+1: ENOSPC", "truncate f 9: ENOSPC"}
	if got := c.Trace(); !slices.Equal(got, want) {
		t.Fatalf("Trace() = %q, want %q", got, want)
	}
	// The stop comes first.
	c.StopAfter(0)
	if _, err := f.WriteAt([]byte("e"), 5); !errors.Is(err, crashfs.ErrStopped) || errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write on a stopped machine with a full disk: %v, want ErrStopped", err)
	}
}

// TestSpaceAccountingMatchesTree runs random operations and checks after
// each that Used is what the tree and the open handles hold.
func TestSpaceAccountingMatchesTree(t *testing.T) {
	t.Parallel()
	refused := 0
	for seed := uint64(1); seed <= 20; seed++ {
		rng := rand.New(rand.NewPCG(seed, 7))
		c := crashfs.New()
		c.SetSpace(int64(rng.IntN(300)))
		names := []string{"a", "b", "c", "d/x", "d/y"}
		if err := c.Mkdir("d", 0o755); err != nil {
			t.Fatal(err)
		}
		var handles []durable.File
		for step := 0; step < 400; step++ {
			name := names[rng.IntN(len(names))]
			switch rng.IntN(10) {
			case 0, 1:
				if f, err := c.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o644); err == nil {
					handles = append(handles, f)
				}
			case 2, 3:
				if len(handles) > 0 {
					f := handles[rng.IntN(len(handles))]
					_, err := f.WriteAt(make([]byte, rng.IntN(60)), int64(rng.IntN(80)))
					if errors.Is(err, syscall.ENOSPC) {
						refused++
					} else if err != nil {
						t.Fatalf("seed %d: write: %v", seed, err)
					}
				}
			case 4:
				if len(handles) > 0 {
					_ = handles[rng.IntN(len(handles))].Truncate(int64(rng.IntN(100)))
				}
			case 5:
				if len(handles) > 0 {
					i := rng.IntN(len(handles))
					_ = handles[i].Close()
					handles = slices.Delete(handles, i, i+1)
				}
			case 6:
				_ = c.Remove(name)
			case 7:
				_ = c.Rename(name, names[rng.IntN(len(names))])
			case 8:
				if len(handles) > 0 {
					_ = handles[rng.IntN(len(handles))].Sync()
				}
				_ = c.SyncDir("/")
				_ = c.SyncDir("d")
			case 9:
				if rng.IntN(4) == 0 {
					c.PowerCut()
					handles = handles[:0]
				} else {
					c.SetSpace(int64(rng.IntN(300)) - 20)
				}
			}
			if got, want := c.Used(), usedByTree(t, c, handles); got != want {
				t.Fatalf("seed %d step %d: Used() = %d, the tree and open handles hold %d; trace %q",
					seed, step, got, want, c.Trace())
			}
		}
	}
	if refused < 50 {
		t.Fatalf("only %d writes ran out of space: the test does not exercise the limit", refused)
	}
}

// usedByTree sums the sizes of the files reachable from the root and of
// those the open handles hold, each inode once.
func usedByTree(t *testing.T, c *crashfs.FS, handles []durable.File) int64 {
	t.Helper()
	sizes := map[uint64]int64{}
	var walk func(dir string)
	walk = func(dir string) {
		ents, err := c.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			fi, err := e.Info()
			if err != nil {
				t.Fatal(err)
			}
			if fi.IsDir() {
				walk(dir + "/" + e.Name())
				continue
			}
			sizes[fi.Sys().(crashfs.Sys).Ino] = fi.Size()
		}
	}
	walk("/")
	for _, h := range handles {
		if fi, err := h.Stat(); err == nil {
			sizes[fi.Sys().(crashfs.Sys).Ino] = fi.Size()
		}
	}
	var sum int64
	for _, s := range sizes {
		sum += s
	}
	return sum
}
