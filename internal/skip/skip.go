// Package skip is the one way svckit's tests give up on a machine that
// cannot run them (no Docker engine, no ip command or network namespaces, no
// FUSE, no /proc, ...).
//
// On a developer's laptop such a test skips. In CI (CI=true) it fails with
// the same message instead: a suite that silently skips there would pass
// without having run, which is worse than a red build.
//
// Skips about the scenario itself (a race that did not reproduce) or about
// -short alone are not for this package: call t.Skip for those.
package skip

import (
	"fmt"
	"os"
	"strconv"
	"testing"
)

// CI reports whether the tests run in CI: the environment variable CI holds
// a true value ("true", as GitHub Actions and GitLab set it, or "1").
func CI() bool {
	ci, err := strconv.ParseBool(os.Getenv("CI"))
	return err == nil && ci
}

// CannotRun ends the test because this machine cannot run it: it skips,
// except in CI, where it fails with the same message. format and args
// say what is missing, as for t.Skipf.
func CannotRun(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if CI() {
		t.Fatalf("%s (CI=%s: in CI a test this machine cannot run fails instead of skipping)", msg, os.Getenv("CI"))
		return
	}
	t.Skip(msg)
}
