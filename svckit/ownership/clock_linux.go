package ownership

import (
	"bytes"
	"os"

	"golang.org/x/sys/unix"
)

// bootNanos reads CLOCK_BOOTTIME: unlike Go's monotonic clock
// (CLOCK_MONOTONIC), it advances while the machine is suspended, so a
// holder resumed after its session expired does not believe its lease
// still valid.
func bootNanos() (int64, bool) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0, false
	}
	return ts.Nano(), true
}

// bootID identifies this boot of this kernel: processes that see the same
// one share the kernel's flock locks.
func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return string(bytes.TrimSpace(b))
}
