package bench

import (
	"os"
	"syscall"
)

// fdatasync flushes f's data and only the metadata needed to read it back
// (not its times): the call a log with preallocated segments makes.
func fdatasync(f *os.File) error {
	for {
		err := syscall.Fdatasync(int(f.Fd()))
		if err != syscall.EINTR { // a signal (Go's preemption) cut the call short: not a failure
			return err
		}
	}
}
