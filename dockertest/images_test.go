package dockertest

import (
	"strings"
	"testing"
)

// Every image runs as the unprivileged user and has no shell (FROM
// scratch: only our static binaries).
func TestImages(t *testing.T) {
	needDocker(t)
	t.Parallel()
	tag := images(t)
	for _, n := range imageNames {
		ref := "svckit/" + n + ":" + tag
		out := strings.Fields(dockerMust(t, "image", "inspect", "--format",
			`{{.Config.User}} {{index .Config.Labels "org.opencontainers.image.vendor"}} {{.Size}}`, ref))
		if len(out) != 3 || out[0] != "65534:65534" || out[1] != "svckit" {
			t.Errorf("%s: user, vendor label, size = %v; want 65534:65534 and svckit", ref, out)
			continue
		}
		if o, err := execDocker("run", "--rm", "--entrypoint", "/bin/sh", ref, "-c", "true"); err == nil {
			t.Errorf("%s has a shell: %s", ref, o)
		}
		t.Logf("%s: user %s, %s bytes", ref, out[0], out[2])
	}
}
