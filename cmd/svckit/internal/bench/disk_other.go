//go:build !linux

package bench

import "os"

// fdatasync is fsync where the system has no fdatasync the bench can
// call: the figure is then an upper bound of the disk's.
func fdatasync(f *os.File) error { return f.Sync() }
