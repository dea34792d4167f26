package crashfuse_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/svckit/svckit/internal/crashfuse"
	"github.com/svckit/svckit/internal/skip"
	"github.com/svckit/svckit/svckit/durable/crashfs"
)

// helperEnv selects a helper mode when the test binary is re-executed as
// a child process (see TestMain).
const helperEnv = "CRASHFUSE_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "writer" {
		os.Exit(writerMain(os.Getenv("CRASHFUSE_TEST_FILE")))
	}
	os.Exit(m.Run())
}

// requireFUSE skips the test where a FUSE mount is impossible, except in
// CI, where a skipped power-loss test would pass unnoticed (skip.CannotRun).
func requireFUSE(t *testing.T) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "not running as root"
	} else if _, err := os.Stat("/dev/fuse"); err != nil {
		why = fmt.Sprintf("no /dev/fuse: %v", err)
	}
	if why != "" {
		skip.CannotRun(t, "FUSE mount impossible: %s", why)
	}
}

// mount serves a fresh crashfs on a temporary directory until the test
// ends.
func mount(t *testing.T) (*crashfs.FS, *crashfuse.Server, string) {
	t.Helper()
	requireFUSE(t)
	fsys := crashfs.New()
	dir := t.TempDir()
	s, err := crashfuse.Mount(dir, fsys)
	if err != nil {
		t.Fatal(err)
	}
	// Registered after TempDir's, so it runs first: the directory is
	// unmounted before it is removed.
	t.Cleanup(func() {
		if err := s.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	return fsys, s, dir
}

// writeSynced creates or replaces path with b through the os package and
// fsyncs the file, not its directory.
func writeSynced(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", path, err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close %s: %v", path, err)
	}
}

// syncDir fsyncs a directory the way Go programs do (FUSE FSYNCDIR).
func syncDir(t *testing.T, dir string) {
	t.Helper()
	if err := syncDirErr(dir); err != nil {
		t.Fatal(err)
	}
}

func syncDirErr(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func mustNotExist(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("stat %s: %v, want it not to exist", path, err)
	}
}

func TestFsyncedWriteSurvivesPowerCut(t *testing.T) {
	fsys, s, dir := mount(t)
	p := filepath.Join(dir, "f")
	writeSynced(t, p, []byte("hello"))
	syncDir(t, dir)
	s.PowerCut()
	if got := readFile(t, p); got != "hello" {
		t.Fatalf("after the cut: %q", got)
	}
	// The directory fsync (FUSE FSYNCDIR) reached crashfs as SyncDir.
	if !slices.ContainsFunc(fsys.Trace(), func(s string) bool { return strings.HasPrefix(s, "fsync dir") }) {
		t.Fatalf("no directory fsync reached crashfs; trace %q", fsys.Trace())
	}
}

func TestUnsyncedWriteLost(t *testing.T) {
	_, s, dir := mount(t)
	p := filepath.Join(dir, "f")
	writeSynced(t, p, []byte("v1"))
	syncDir(t, dir)

	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte(" and more")); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, p); got != "v1 and more" {
		t.Fatalf("before the cut: %q", got)
	}
	s.PowerCut()
	if got := readFile(t, p); got != "v1" {
		t.Fatalf("after the cut: %q, want the fsynced %q", got, "v1")
	}
	if fi, err := os.Stat(p); err != nil || fi.Size() != 2 {
		t.Fatalf("stat after the cut: %v, %v; want size 2", fi, err)
	}
}

func TestCreateWithoutDirFsyncLost(t *testing.T) {
	_, s, dir := mount(t)
	writeSynced(t, filepath.Join(dir, "new"), []byte("data")) // data fsynced, entry not
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	s.PowerCut()
	mustNotExist(t, filepath.Join(dir, "new"))
	mustNotExist(t, filepath.Join(dir, "sub"))
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) != 0 {
		t.Fatalf("listing after the cut: %v, %v; want empty", ents, err)
	}
}

func TestRenameWithoutDirFsyncReverted(t *testing.T) {
	_, s, dir := mount(t)
	state, tmp := filepath.Join(dir, "state"), filepath.Join(dir, "state.tmp")
	writeSynced(t, state, []byte("old"))
	syncDir(t, dir)
	writeSynced(t, tmp, []byte("new"))
	if err := os.Rename(tmp, state); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, state); got != "new" {
		t.Fatalf("before the cut: %q", got)
	}
	s.PowerCut()
	if got := readFile(t, state); got != "old" {
		t.Fatalf("rename without a directory fsync survived the cut: %q", got)
	}
	mustNotExist(t, tmp)
}

func TestRenameWithDirFsyncKept(t *testing.T) {
	_, s, dir := mount(t)
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	syncDir(t, dir)
	state, tmp := filepath.Join(sub, "state"), filepath.Join(sub, "state.tmp")
	writeSynced(t, state, []byte("old"))
	syncDir(t, sub)
	writeSynced(t, tmp, []byte("new"))
	if err := os.Rename(tmp, state); err != nil {
		t.Fatal(err)
	}
	syncDir(t, sub)
	s.PowerCut()
	if got := readFile(t, state); got != "new" {
		t.Fatalf("after the cut: %q", got)
	}
	mustNotExist(t, tmp)
}

func TestRemoveWithoutDirFsyncComesBack(t *testing.T) {
	_, s, dir := mount(t)
	p := filepath.Join(dir, "f")
	writeSynced(t, p, []byte("data"))
	syncDir(t, dir)
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	mustNotExist(t, p)
	s.PowerCut()
	if got := readFile(t, p); got != "data" {
		t.Fatalf("after the cut: %q", got)
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	syncDir(t, dir)
	s.PowerCut()
	mustNotExist(t, p)
}

// TestReadAfterPowerCutSeesDurableImage checks that no kernel cache (page
// cache, attributes, dentries) answers with the state a power cut lost.
func TestReadAfterPowerCutSeesDurableImage(t *testing.T) {
	_, s, dir := mount(t)
	p := filepath.Join(dir, "f")
	durable := bytes.Repeat([]byte("A"), 64<<10)
	writeSynced(t, p, durable)
	syncDir(t, dir)
	if got := readFile(t, p); got != string(durable) {
		t.Fatal("first read differs")
	}

	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Overwrite in place, same size: only a cache could still answer B
	// after the cut; a size change would give it away.
	lost := bytes.Repeat([]byte("B"), len(durable))
	if _, err := f.WriteAt(lost, 0); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(lost))
	if _, err := f.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, lost) {
		t.Fatalf("reading back the unsynced write: %v", err)
	}
	if got := readFile(t, p); got != string(lost) {
		t.Fatal("another open does not see the unsynced write")
	}
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	s.PowerCut()

	if got := readFile(t, p); got != string(durable) {
		t.Fatalf("re-read after the cut: %d bytes, starting %q; want the durable 64 KiB of A", len(got), got[:min(len(got), 8)])
	}
	if fi, err := os.Stat(p); err != nil || fi.Size() != int64(len(durable)) {
		t.Fatalf("stat after the cut: %v, %v", fi, err)
	}
	// Handles from before the cut are dead, as the process holding them
	// would be.
	if _, err := f.ReadAt(buf, 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read through a handle from before the cut: %v, want EIO", err)
	}
	if _, err := f.WriteAt([]byte("x"), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write through a handle from before the cut: %v, want EIO", err)
	}
	if err := d.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("fsync of a directory handle from before the cut: %v, want EIO", err)
	}
}

// TestKilledMidWriteLeavesFsyncedPrefix runs a writer process on the
// mount, SIGKILLs it while it writes what it never fsyncs, cuts the power
// and checks that exactly what it fsynced is left.
func TestKilledMidWriteLeavesFsyncedPrefix(t *testing.T) {
	_, s, dir := mount(t)
	p := filepath.Join(dir, "sub", "data")
	if err := os.Mkdir(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	syncDir(t, dir)

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), helperEnv+"=writer", "CRASHFUSE_TEST_FILE="+p)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe() // held open: the writer waits on it when done
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()

	// Wait for the writer to say it is writing unsynced data.
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	timeout := time.NewTimer(time.Minute)
	defer timeout.Stop()
	synced := 0
wait:
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("writer ended early: %v; stderr: %s", cmd.Wait(), stderr.String())
			}
			if n, ok := strings.CutPrefix(l, "synced "); ok {
				if _, err := fmt.Sscan(n, &synced); err != nil {
					t.Fatalf("writer said %q", l)
				}
			}
			if l == "unsynced" {
				break wait
			}
		case <-timeout.C:
			t.Fatalf("writer did not start its unsynced writes within a minute; stderr: %s", stderr.String())
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed = true
	if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("writer exit: %v, want killed; stderr: %s", err, stderr.String())
	}
	for range lines { // the goroutine ends with the pipe
	}

	want := writerSynced()
	if synced != len(want) {
		t.Fatalf("writer reported %d bytes fsynced, want %d", synced, len(want))
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() <= int64(len(want)) {
		t.Fatalf("before the cut the file has %d bytes; the writer's unsynced data is missing", fi.Size())
	}
	t.Logf("killed with %d bytes in the file, %d fsynced", fi.Size(), len(want))

	s.PowerCut()
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("after the cut: %d bytes, want exactly the %d fsynced", len(got), len(want))
	}
}

// The writer: records of writerRecord bytes, each fsynced, then unsynced
// data until killed.
const (
	writerRecords = 16
	writerRecord  = 4096
	writerChunk   = 1 << 20
	writerMax     = 64 << 20 // then it waits: a missed kill must not fill memory
)

// writerSynced is what the writer fsyncs.
func writerSynced() []byte {
	var b []byte
	for i := range writerRecords {
		b = append(b, bytes.Repeat([]byte{byte('a' + i)}, writerRecord)...)
	}
	return b
}

func writerMain(path string) int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "writer:", err)
		return 1
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fail(err)
	}
	if err := syncDirErr(filepath.Dir(path)); err != nil {
		return fail(err)
	}
	synced := writerSynced()
	for off := 0; off < len(synced); off += writerRecord {
		if _, err := f.Write(synced[off : off+writerRecord]); err != nil {
			return fail(err)
		}
		if err := f.Sync(); err != nil {
			return fail(err)
		}
		fmt.Printf("synced %d\n", off+writerRecord)
	}
	chunk := bytes.Repeat([]byte{0xff}, writerChunk)
	for n := 0; n < writerMax; n += writerChunk {
		if _, err := f.Write(chunk); err != nil {
			return fail(err)
		}
		if n == 0 {
			fmt.Println("unsynced")
		}
	}
	_, _ = io.Copy(io.Discard, os.Stdin) // until killed
	return 0
}

// TestOSOperations covers what Go programs doing durable persistence do
// through the os package.
func TestOSOperations(t *testing.T) {
	fsys, _, dir := mount(t)
	p := filepath.Join(dir, "f")

	// O_CREATE|O_EXCL, then again.
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second O_EXCL create: %v", err)
	}
	// Sequential writes, pwrite past the end, pread.
	for _, s := range []string{"abc", "def"} {
		if _, err := f.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.WriteAt([]byte("XY"), 8); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := f.ReadAt(buf, 4); err != nil || string(buf) != "ef\x00\x00" {
		t.Fatalf("pread: %q, %v", buf, err)
	}
	if fi, err := f.Stat(); err != nil || fi.Size() != 10 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("fstat: %v, %v", fi, err)
	}
	// f.Truncate and os.Truncate.
	if err := f.Truncate(4); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, p); got != "abcd" {
		t.Fatalf("after ftruncate: %q", got)
	}
	if err := os.Truncate(p, 2); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, p); got != "ab" {
		t.Fatalf("after truncate: %q", got)
	}
	// O_TRUNC, O_WRONLY, O_RDONLY.
	if err := os.WriteFile(p, []byte("fresh"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, p); got != "fresh" {
		t.Fatalf("after O_TRUNC: %q", got)
	}
	r, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Write([]byte("x")); err == nil {
		t.Fatal("write to an O_RDONLY file succeeded")
	}
	r.Close()
	// O_APPEND.
	a, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Write([]byte("+1")); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if got := readFile(t, p); got != "fresh+1" {
		t.Fatalf("after append: %q", got)
	}
	// Chmod and times are accepted.
	if err := os.Chmod(p, 0o640); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("after chmod: %v, %v", fi, err)
	}
	if err := os.Chtimes(p, time.Now(), time.Now()); err != nil {
		t.Fatal(err)
	}

	// Directories: mkdir, listing with inode numbers, rmdir, unlink.
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(sub, 0o750); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second mkdir: %v", err)
	}
	writeSynced(t, filepath.Join(sub, "x"), []byte("x"))
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"f", "sub"}) || !ents[1].IsDir() {
		t.Fatalf("listing: %q", names)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	cfi, err := fsys.Stat("f")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fi.Sys().(*syscall.Stat_t).Ino, cfi.Sys().(crashfs.Sys).Ino; got != want {
		t.Fatalf("inode number through the mount %d, crashfs's %d", got, want)
	}
	if err := os.Remove(sub); err == nil {
		t.Fatal("rmdir of a non-empty directory succeeded")
	}
	if err := syscall.Rmdir(p); !errors.Is(err, syscall.ENOTDIR) {
		t.Fatalf("rmdir of a file: %v", err)
	}
	if err := syscall.Unlink(sub); err == nil {
		t.Fatal("unlink of a directory succeeded")
	}
	if err := os.Remove(filepath.Join(sub, "x")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(sub); err != nil {
		t.Fatal(err)
	}

	// Rename over an existing file; an open handle follows the inode.
	q := filepath.Join(dir, "q")
	writeSynced(t, q, []byte("q"))
	h, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := os.Rename(p, q); err != nil {
		t.Fatal(err)
	}
	mustNotExist(t, p)
	if got := readFile(t, q); got != "fresh+1" {
		t.Fatalf("after rename over: %q", got)
	}
	if b, err := io.ReadAll(h); err != nil || string(b) != "fresh+1" {
		t.Fatalf("reading a handle opened before the rename: %q, %v", b, err)
	}

	// statfs, as df does.
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil || st.Bsize == 0 || st.Bavail == 0 {
		t.Fatalf("statfs: %+v, %v", st, err)
	}
}

// TestFlock checks that flock and fcntl locks work on the mount (the
// kernel keeps them; see the package comment), so a program that locks
// its data directory starts, and a second locker is refused.
func TestFlock(t *testing.T) {
	_, _, dir := mount(t)
	p := filepath.Join(dir, "LOCK")
	writeSynced(t, p, nil)
	open := func(name string) *os.File {
		f, err := os.OpenFile(name, os.O_RDONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	a, b := open(p), open(p)
	if err := syscall.Flock(int(a.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("flock: %v", err)
	}
	if err := syscall.Flock(int(b.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); !errors.Is(err, syscall.EWOULDBLOCK) {
		t.Fatalf("second flock: %v, want EWOULDBLOCK", err)
	}
	if err := syscall.Flock(int(a.Fd()), syscall.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(b.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("flock after unlock: %v", err)
	}
	// A directory, as some programs lock their data directory itself.
	if err := syscall.Flock(int(open(dir).Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("flock of the directory: %v", err)
	}
	// POSIX record locks.
	w, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: io.SeekStart}
	if err := syscall.FcntlFlock(w.Fd(), syscall.F_SETLK, &lk); err != nil {
		t.Fatalf("fcntl F_SETLK: %v", err)
	}
}

// TestStopAfterThroughMount: a stopped machine (crashfs.StopAfter) fails
// writes with EIO and still serves reads; the power cut restarts it.
func TestStopAfterThroughMount(t *testing.T) {
	fsys, s, dir := mount(t)
	p := filepath.Join(dir, "f")
	writeSynced(t, p, []byte("v1"))
	syncDir(t, dir)
	fsys.StopAfter(0)
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("v2"), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write on a stopped machine: %v, want EIO", err)
	}
	if err := os.Mkdir(filepath.Join(dir, "d"), 0o755); !errors.Is(err, syscall.EIO) {
		t.Fatalf("mkdir on a stopped machine: %v, want EIO", err)
	}
	if got := readFile(t, p); got != "v1" {
		t.Fatalf("read on a stopped machine: %q", got)
	}
	s.PowerCut()
	writeSynced(t, p, []byte("v3"))
	if got := readFile(t, p); got != "v3" {
		t.Fatalf("after the cut: %q", got)
	}
}

// TestUnmountBusyAndIdempotent: Unmount succeeds while a file is open
// there, and again after that.
func TestUnmountBusyAndIdempotent(t *testing.T) {
	_, s, dir := mount(t)
	f, err := os.Create(filepath.Join(dir, "held"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := s.Unmount(); err != nil {
		t.Fatalf("unmount while busy: %v", err)
	}
	if err := s.Unmount(); err != nil {
		t.Fatalf("second unmount: %v", err)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type == 0x65735546 {
		t.Fatal("still a FUSE mount after Unmount")
	}
}

// TestRenamedBackFileUsable: a file whose unsynced rename the power cut
// undid is usable under its old name, through paths and handles (go-fuse's
// tree must not keep the lost name).
func TestRenamedBackFileUsable(t *testing.T) {
	_, s, dir := mount(t)
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	syncDir(t, dir)
	a, b := filepath.Join(sub, "a"), filepath.Join(sub, "b")
	writeSynced(t, a, []byte("a"))
	syncDir(t, sub)
	if err := os.Rename(a, b); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, b); got != "a" {
		t.Fatalf("before the cut: %q", got)
	}
	s.PowerCut()
	mustNotExist(t, b)
	writeSynced(t, a, []byte("again"))
	if got := readFile(t, a); got != "again" {
		t.Fatalf("after the cut: %q", got)
	}
	if err := os.Truncate(a, 1); err != nil {
		t.Fatalf("truncate by path after the cut: %v", err)
	}
	if err := os.Chmod(a, 0o600); err != nil {
		t.Fatalf("chmod after the cut: %v", err)
	}
	if fi, err := os.Stat(a); err != nil || fi.Size() != 1 {
		t.Fatalf("stat after the cut: %v, %v", fi, err)
	}
}

// TestHangSyncs: while the disk hangs, writes and reads go on and fsyncs
// of files and directories wait; ResumeSyncs answers them, and what they
// synced survives a power cut. Unmount resumes a hung disk by itself.
func TestHangSyncs(t *testing.T) {
	_, s, dir := mount(t)
	p := filepath.Join(dir, "f")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s.HangSyncs()
	if _, err := f.Write([]byte("kept")); err != nil {
		t.Fatalf("write while the disk hangs: %v", err)
	}
	if got := readFile(t, p); got != "kept" {
		t.Fatalf("read while the disk hangs: %q", got)
	}
	synced := make(chan error, 2)
	go func() { synced <- f.Sync() }()
	go func() { synced <- syncDirErr(dir) }()
	select {
	case err := <-synced:
		t.Fatalf("an fsync answered (%v) while the disk hangs", err)
	case <-time.After(200 * time.Millisecond): // a while for it not to answer: the negative can only be timed
	}
	s.ResumeSyncs()
	for range 2 {
		if err := <-synced; err != nil {
			t.Fatalf("fsync after ResumeSyncs: %v", err)
		}
	}
	s.PowerCut()
	if got := readFile(t, p); got != "kept" {
		t.Fatalf("after the power cut: %q, want what the resumed fsyncs made durable", got)
	}
	s.HangSyncs()
	if err := s.Unmount(); err != nil {
		t.Fatalf("unmount with the disk hung: %v", err)
	}
}

// TestNoSpaceThroughMount: a full crashfs (SetSpace) makes a process's
// write short by what still fit and the next one fail with ENOSPC, as a
// full tmpfs does; nothing turns it into EIO, and the space returns.
func TestNoSpaceThroughMount(t *testing.T) {
	fsys, _, dir := mount(t)
	p := filepath.Join(dir, "f")
	fsys.SetSpace(10)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// os.File.Write retries a short write, so it reports what fit and ENOSPC.
	n, err := f.Write([]byte("0123456789abcdef"))
	if n != 10 || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write of 16 bytes into 10: %d, %v; want 10 and ENOSPC", n, err)
	}
	// write(2) itself: first the short count, then the error.
	fsys.SetSpace(13)
	fd := int(f.Fd())
	if k, err := syscall.Pwrite(fd, []byte("ABCDE"), 10); k != 3 || err != nil {
		t.Fatalf("pwrite of 5 bytes into 3: %d, %v; want a short write of 3", k, err)
	}
	if k, err := syscall.Pwrite(fd, []byte("x"), 13); k > 0 || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("pwrite on a full disk: %d, %v; want ENOSPC", k, err)
	}
	if got := readFile(t, p); got != "0123456789ABC" {
		t.Fatalf("after the short writes: %q", got)
	}
	if err := os.Truncate(p, 20); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("growing truncate on a full disk: %v, want ENOSPC", err)
	}
	// Metadata still works, and removing a file frees its space.
	q := filepath.Join(dir, "g")
	writeSynced(t, q, nil)
	if err := os.Rename(q, q+"2"); err != nil {
		t.Fatal(err)
	}
	syncDir(t, dir)
	if err := os.Remove(q + "2"); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(3); err != nil {
		t.Fatal(err)
	}
	if got := fsys.Used(); got != 3 {
		t.Fatalf("Used() = %d after truncating to 3", got)
	}
	fsys.SetSpace(-1)
	if _, err := f.WriteAt([]byte("more than the old limit"), 3); err != nil {
		t.Fatalf("with the space back: %v", err)
	}
}
