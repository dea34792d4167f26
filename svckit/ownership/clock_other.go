//go:build !linux

package ownership

// bootNanos is unavailable here: the lease uses Go's monotonic clock.
func bootNanos() (int64, bool) { return 0, false }

// bootID is unknown here: a predecessor is then never taken for dead
// before its session expires.
func bootID() string { return "" }
