package durable

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// datasyncOS runs fdatasync(2) inside SyscallConn().Control, which holds
// the descriptor open for the call as os.File.Sync does: a concurrent
// Close waits instead of letting the number be reused under us.
func datasyncOS(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			serr = syscall.Fdatasync(int(fd))
			if !errors.Is(serr, syscall.EINTR) {
				return
			}
		}
	}); err != nil {
		return controlErr(f, err)
	}
	if serr != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: serr}
	}
	return nil
}

// controlErr says what a failed SyscallConn().Control means: its only
// failure is a file closed meanwhile.
func controlErr(f *os.File, err error) error {
	return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: fmt.Errorf("%w (%v)", os.ErrClosed, err)}
}
