//go:build unix

package durable

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// LockDir takes an exclusive lock on dir (creating it) for as long as this
// process lives or until the returned release is called: a second process
// given the same data directory by mistake is refused at once instead of
// writing the same files. The lock is flock(2) on dir/.lock, which the
// kernel drops when the process dies, so a SIGKILLed holder never leaves
// it behind; holding it proves that no other process on this machine
// uses the directory.
func LockDir(dir string) (release func() error, err error) {
	// Everything svckit keeps lives under dir: its entry, and its
	// parents', must survive a power loss, or the whole state goes with
	// them. MkdirAll fsyncs the parents of what it creates; SyncParents
	// covers a directory made earlier by something that did not.
	if err := MkdirAll(OS(), dir); err != nil {
		return nil, fmt.Errorf("creating data directory %s: %w", dir, err)
	}
	if err := SyncParents(OS(), dir); err != nil {
		return nil, fmt.Errorf("making data directory %s durable: %w", dir, err)
	}
	path := filepath.Join(dir, ".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		pid := ""
		if b, rerr := os.ReadFile(path); rerr == nil {
			pid = strings.TrimSpace(string(b))
		}
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			if pid != "" {
				return nil, fmt.Errorf("data directory %s is in use by another process (pid %s)", dir, pid)
			}
			return nil, fmt.Errorf("data directory %s is in use by another process", dir)
		}
		return nil, fmt.Errorf("locking data directory %s: %w", dir, err)
	}
	// The holder's pid, for the message above; not relied upon.
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() error {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		return f.Close()
	}, nil
}
