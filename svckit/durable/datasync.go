package durable

import "os"

// Datasync flushes f's data to stable storage together with the metadata
// needed to read it back (the size, the block map), but not its times:
// fdatasync(2) where the OS has it, Sync elsewhere. On a file whose
// blocks were zero-filled and fsynced ahead of use, an overwrite leaves
// no such metadata behind, so Datasync costs one data flush and no
// journal commit: why write-ahead logs (PostgreSQL, etcd) preallocate.
//
// A File of another FS is asked for its own Datasync() error method when
// it has one, and synced with Sync otherwise (always correct, maybe
// slower). As with os.File.Sync, an error for a file closed meanwhile
// wraps os.ErrClosed.
func Datasync(f File) error {
	switch f := f.(type) {
	case interface{ Datasync() error }:
		return f.Datasync()
	case *os.File:
		return datasyncOS(f)
	}
	return f.Sync()
}
