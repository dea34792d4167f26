//go:build !unix

package durable

import "os"

// LockDir only creates dir on systems without flock(2): nothing stops a
// second process from using it.
func LockDir(dir string) (release func() error, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return func() error { return nil }, nil
}
