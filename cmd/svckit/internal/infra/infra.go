// Package infra reads the system's infrastructure as source: the tree
//
//	datacenters/<dc>/<host>/docker-compose.yml   what runs on each host
//	images/<name>/Dockerfile                     every image, FROM scratch
//
// lists it (datacenter → host → containers) and checks it: compose files
// that do not parse, images with no Dockerfile, ports published twice,
// services of ours without their Consul address, stateful containers
// without a volume, containers without a health check or restart policy;
// and that every datacenter is secure by default (security.go: Consul's
// ACLs, gossip encryption and TLS, nsqd's TLS, our services' credentials,
// datacenters/<dc>/acl.flags and nsqauth-policy.json, and with
// CheckOptions.Secrets the Consul agents' configuration in the secrets).
// Every problem names its file and service. The operator CLI's
// `svckit infra ls` and `svckit infra check` are thin wrappers.
package infra

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
)

// Directory names and the compose file name in the tree.
const (
	DatacentersDir = "datacenters"
	ImagesDir      = "images"
	ComposeFile    = "docker-compose.yml"
)

// ImagePrefix is the repository prefix of images built from images/<name>.
const ImagePrefix = "svckit/"

// Tree is the infrastructure found under a root directory.
type Tree struct {
	Root        string
	Datacenters []*Datacenter
	// Images are the names under images/ that have a Dockerfile.
	Images map[string]bool
	// Problems found while reading (parse errors and the like); Check
	// reports them along with its own.
	Problems []Problem
}

// Datacenter is one directory under datacenters/.
type Datacenter struct {
	Name  string
	Hosts []*Host
}

// Host is one host: its compose file and what it runs.
type Host struct {
	Datacenter string
	Name       string
	File       string // the compose file, relative to the tree's root (slash-separated)
	Containers []Container
	Volumes    map[string]bool // named volumes declared in the file
	// VolumeNames are the names on the engine that the file gives its
	// volumes (name:), by key; a volume without one is absent.
	VolumeNames map[string]string
	Networks    []Network
	// Parsed is false when the compose file could not be read as a whole.
	Parsed bool
}

// Problem is one finding, with the file and service it concerns.
type Problem struct {
	File    string // relative to the tree's root
	Line    int    // 0 when unknown
	Service string // "" when the problem is the file's (or the tree's)
	Msg     string
}

func (p Problem) String() string {
	loc := p.File
	if p.Line > 0 {
		loc = fmt.Sprintf("%s:%d", p.File, p.Line)
	}
	if p.Service != "" {
		return fmt.Sprintf("%s: service %s: %s", loc, p.Service, p.Msg)
	}
	return fmt.Sprintf("%s: %s", loc, p.Msg)
}

// Options tunes Load.
type Options struct {
	// Env resolves ${VAR} in compose files, as docker-compose would with
	// this environment. nil = NoEnv (every default applies).
	Env Lookup
}

// Load reads the tree under root. It fails only when root itself cannot
// be read; everything else wrong is a Problem in the Tree.
func Load(root string, o Options) (*Tree, error) {
	if o.Env == nil {
		o.Env = NoEnv
	}
	st, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("infra root: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("infra root %s: not a directory", root)
	}
	t := &Tree{Root: root, Images: map[string]bool{}}
	imgs, err := os.ReadDir(filepath.Join(root, ImagesDir))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		t.Problems = append(t.Problems, Problem{File: ImagesDir, Msg: "no images/ directory: every image is built from images/<name>/Dockerfile"})
	case err != nil:
		return nil, err
	}
	for _, e := range imgs {
		if e.IsDir() {
			if _, err := os.Stat(filepath.Join(root, ImagesDir, e.Name(), "Dockerfile")); err == nil {
				t.Images[e.Name()] = true
			}
		}
	}
	dcs, err := os.ReadDir(filepath.Join(root, DatacentersDir))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		t.Problems = append(t.Problems, Problem{File: DatacentersDir, Msg: "no datacenters/ directory: want datacenters/<dc>/<host>/" + ComposeFile})
		return t, nil
	case err != nil:
		return nil, err
	}
	for _, d := range dcs {
		if !d.IsDir() {
			continue
		}
		dc := &Datacenter{Name: d.Name()}
		hosts, err := os.ReadDir(filepath.Join(root, DatacentersDir, d.Name()))
		if err != nil {
			return nil, err
		}
		for _, h := range hosts {
			if !h.IsDir() {
				continue
			}
			rel := filepath.ToSlash(filepath.Join(DatacentersDir, dc.Name, h.Name(), ComposeFile))
			file := filepath.Join(root, filepath.FromSlash(rel))
			host := &Host{Datacenter: dc.Name, Name: h.Name(), File: rel}
			if _, err := os.Stat(file); err != nil {
				t.Problems = append(t.Problems, Problem{File: rel, Msg: "host directory without its compose file"})
				dc.Hosts = append(dc.Hosts, host)
				continue
			}
			cf := parseCompose(file, rel, o.Env)
			host.Containers, host.Volumes, host.VolumeNames, host.Networks = cf.Containers, cf.Volumes, cf.VolumeNames, cf.Networks
			host.Parsed = cf.Parsed
			t.Problems = append(t.Problems, cf.Problems...)
			dc.Hosts = append(dc.Hosts, host)
		}
		if len(dc.Hosts) == 0 {
			t.Problems = append(t.Problems, Problem{File: filepath.ToSlash(filepath.Join(DatacentersDir, dc.Name)), Msg: "datacenter without hosts"})
		}
		t.Datacenters = append(t.Datacenters, dc)
	}
	sort.Slice(t.Datacenters, func(i, j int) bool { return t.Datacenters[i].Name < t.Datacenters[j].Name })
	return t, nil
}

// Host returns datacenter dc's host, or nil.
func (t *Tree) Host(dc, host string) *Host {
	for _, d := range t.Datacenters {
		if d.Name != dc {
			continue
		}
		for _, h := range d.Hosts {
			if h.Name == host {
				return h
			}
		}
	}
	return nil
}

// Container returns the host's container (compose service) by name, or nil.
func (h *Host) Container(name string) *Container {
	for i := range h.Containers {
		if h.Containers[i].Name == name {
			return &h.Containers[i]
		}
	}
	return nil
}
