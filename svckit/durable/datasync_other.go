//go:build !linux

package durable

import "os"

// datasyncOS is Sync where the standard library offers no fdatasync.
func datasyncOS(f *os.File) error { return f.Sync() }
