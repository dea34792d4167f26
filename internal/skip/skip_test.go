package skip

import (
	"fmt"
	"testing"
)

// recorder is a testing.TB that records what CannotRun asked for instead of
// ending the test.
type recorder struct {
	testing.TB
	fatal, skipped string
}

func (r *recorder) Helper()                           {}
func (r *recorder) Fatalf(format string, args ...any) { r.fatal = fmt.Sprintf(format, args...) }
func (r *recorder) Skip(args ...any)                  { r.skipped = fmt.Sprint(args...) }

func TestCannotRun(t *testing.T) {
	for _, c := range []struct {
		ci       string
		wantFail bool
	}{
		{"", false}, {"false", false}, {"0", false}, {"yes", false},
		{"true", true}, {"1", true}, {"TRUE", true},
	} {
		t.Run("CI="+c.ci, func(t *testing.T) {
			t.Setenv("CI", c.ci)
			r := &recorder{}
			CannotRun(r, "no %s here", "FUSE")
			switch {
			case c.wantFail && (r.skipped != "" || r.fatal != "no FUSE here (CI="+c.ci+": in CI a test this machine cannot run fails instead of skipping)"):
				t.Errorf("CI=%q: skipped %q, failed %q; want a failure with the message", c.ci, r.skipped, r.fatal)
			case !c.wantFail && (r.fatal != "" || r.skipped != "no FUSE here"):
				t.Errorf("CI=%q: skipped %q, failed %q; want a skip with the message", c.ci, r.skipped, r.fatal)
			}
		})
	}
}
