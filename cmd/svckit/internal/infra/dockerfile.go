package infra

import (
	"encoding/json"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// dockerfile is what the checks need of an image's Dockerfile (its final
// stage): the environment, the user, the working directory, and the
// directories it creates owned by someone (COPY/ADD --chown=… to DIR/).
type dockerfile struct {
	Env     map[string]string
	User    string            // "" = root
	Workdir string            // "" = /
	Owned   map[string]string // directory (clean, absolute) → --chown value
	// Entrypoint and Cmd are the image's, in their exec (JSON) form; nil
	// when absent or in the shell form (which scratch images cannot run).
	Entrypoint, Cmd []string
}

// readDockerfile parses the Dockerfile at file; ok is false when it cannot
// be read.
func readDockerfile(file string) (df dockerfile, ok bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return df, false
	}
	df = dockerfile{Env: map[string]string{}, Owned: map[string]string{}}
	var logical []string
	var cur strings.Builder
	for _, line := range strings.Split(string(b), "\n") {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "#") {
			continue
		}
		if s, cont := strings.CutSuffix(t, `\`); cont {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(t)
		if s := strings.TrimSpace(cur.String()); s != "" {
			logical = append(logical, s)
		}
		cur.Reset()
	}
	for _, l := range logical {
		f := strings.Fields(l)
		switch strings.ToUpper(f[0]) {
		case "FROM": // a new stage: only the last one is the image
			df = dockerfile{Env: map[string]string{}, Owned: map[string]string{}}
		case "ENV":
			args := f[1:]
			if len(args) >= 2 && !strings.Contains(args[0], "=") {
				df.Env[args[0]] = strings.Join(args[1:], " ") // ENV key value
				continue
			}
			for _, kv := range args {
				if k, v, ok := strings.Cut(kv, "="); ok {
					df.Env[k] = strings.Trim(v, `"'`)
				}
			}
		case "ENTRYPOINT", "CMD":
			var list []string
			if err := json.Unmarshal([]byte(strings.TrimSpace(l[len(f[0]):])), &list); err != nil {
				list = nil
			}
			if strings.ToUpper(f[0]) == "CMD" {
				df.Cmd = list
			} else {
				df.Entrypoint = list
			}
		case "USER":
			if len(f) > 1 {
				df.User = f[1]
			}
		case "WORKDIR":
			if len(f) > 1 {
				df.Workdir = absIn(df.Workdir, f[1])
			}
		case "COPY", "ADD":
			var chown string
			var rest []string
			for _, a := range f[1:] {
				if v, ok := strings.CutPrefix(a, "--chown="); ok {
					chown = v
				} else if !strings.HasPrefix(a, "--") {
					rest = append(rest, a)
				}
			}
			if chown == "" || len(rest) < 2 {
				continue
			}
			dest := rest[len(rest)-1]
			if strings.HasSuffix(dest, "/") {
				df.Owned[absIn(df.Workdir, dest)] = chown
			}
		}
	}
	return df, true
}

// absIn resolves p against the working directory dir ("" = /).
func absIn(dir, p string) string {
	if dir == "" {
		dir = "/"
	}
	if !path.IsAbs(p) {
		p = path.Join(dir, p)
	}
	return path.Clean(p)
}

// imageDockerfile is the Dockerfile a container's image is built from, ""
// when it is not one of the tree's.
func imageDockerfile(t *Tree, c *Container) string {
	if c.Build != "" {
		return c.Dockerfile
	}
	name, ok := strings.CutPrefix(c.Image, ImagePrefix)
	if !ok {
		return ""
	}
	if i := strings.IndexAny(name, ":@"); i >= 0 {
		name = name[:i]
	}
	if !t.Images[name] {
		return ""
	}
	return filepath.Join(t.Root, ImagesDir, name, "Dockerfile")
}

// defaultDataDir is our services' --data-dir default (svckit/config),
// relative to the working directory.
const defaultDataDir = "data"

// checkDataDir: every service of ours locks its data directory and keeps
// its dead letters there (stateful ones their state too), so the directory
// must exist and belong to the image's user: scratch images have no other
// writable place, and a named volume mounted there starts as a copy of the
// image's directory, owner included. A worker image without one starts,
// fails with "mkdir data: permission denied" and restarts for ever.
func checkDataDir(t *Tree, h *Host, c *Container, add addFunc) {
	file := imageDockerfile(t, c)
	if file == "" {
		return // checkImage says so
	}
	df, ok := readDockerfile(file)
	if !ok || df.User == "" || df.User == "root" || df.User == "0" || strings.HasPrefix(df.User, "0:") {
		return // root writes anywhere
	}
	dir, from := c.Env["SVCKIT_DATA_DIR"], "SVCKIT_DATA_DIR in the compose file"
	if dir == "" {
		dir, from = df.Env["SVCKIT_DATA_DIR"], "SVCKIT_DATA_DIR in the image"
	}
	if dir == "" {
		dir, from = defaultDataDir, "the default --data-dir, as the image sets no SVCKIT_DATA_DIR"
	}
	dir = absIn(df.Workdir, dir)
	rel, _ := filepath.Rel(t.Root, file)
	if _, owned := df.Owned[dir]; !owned {
		add(h, c, 0, "its data directory %s (%s) is not made by %s for its user %s (want COPY --chown=%s images/common/empty/ %s/): the service cannot lock it and exits",
			dir, from, filepath.ToSlash(rel), df.User, df.User, dir)
	}
}
