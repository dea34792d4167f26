package crashfs

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/svckit/svckit/svckit/durable"
)

// The FS's operations on names: each resolves its path in the programs'
// view (lookup) and changes only that view; SyncDir copies a directory's
// entries to the durable image. resize, which writes use too, grows or
// shrinks a file within the space limit.

func split(name string) []string {
	name = filepath.ToSlash(filepath.Clean(name))
	name = strings.Trim(name, "/")
	if name == "" || name == "." {
		return nil
	}
	return strings.Split(name, "/")
}

// lookup returns the parent directory of name and name's inode (nil if
// absent). Caller holds mu.
func (c *FS) lookup(name string) (parent *inode, base string, n *inode, err error) {
	parts := split(name)
	if len(parts) == 0 {
		return nil, "", c.root, nil
	}
	d := c.root
	for _, p := range parts[:len(parts)-1] {
		ch := d.ents[p]
		if ch == nil {
			return nil, "", nil, &fs.PathError{Op: "lookup", Path: name, Err: fs.ErrNotExist}
		}
		if !ch.dir {
			return nil, "", nil, &fs.PathError{Op: "lookup", Path: name, Err: syscall.ENOTDIR}
		}
		d = ch
	}
	base = parts[len(parts)-1]
	return d, base, d.ents[base], nil
}

// OpenFile opens name. O_CREATE, O_EXCL, O_TRUNC and O_APPEND are
// honoured; perm is the new file's permission bits.
func (c *FS) OpenFile(name string, flag int, perm fs.FileMode) (durable.File, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	parent, base, n, err := c.lookup(name)
	if err != nil {
		return nil, err
	}
	switch {
	case n == nil && flag&os.O_CREATE == 0:
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	case n != nil && flag&os.O_CREATE != 0 && flag&os.O_EXCL != 0:
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrExist}
	case n != nil && n.dir:
		return nil, &fs.PathError{Op: "open", Path: name, Err: syscall.EISDIR}
	case n == nil && parent == nil:
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	case n == nil:
		if err := c.mutate("create " + name); err != nil {
			return nil, err
		}
		n = c.newFile(perm)
		n.links = 1
		parent.ents[base] = n
	}
	if flag&os.O_TRUNC != 0 && len(n.data) > 0 {
		if err := c.mutate("truncate " + name + " 0"); err != nil {
			return nil, err
		}
		c.resize(n, 0)
	}
	n.opens++
	return &file{c: c, n: n, name: name, gen: c.gen,
		write: flag&(os.O_WRONLY|os.O_RDWR) != 0, append: flag&os.O_APPEND != 0}, nil
}

// ReadDir lists name's entries, sorted.
func (c *FS) ReadDir(name string) ([]fs.DirEntry, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, _, n, err := c.lookup(name)
	if err != nil {
		return nil, err
	}
	if n == nil {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: fs.ErrNotExist}
	}
	if !n.dir {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: syscall.ENOTDIR}
	}
	out := make([]fs.DirEntry, 0, len(n.ents))
	for nm, ch := range n.ents {
		out = append(out, fs.FileInfoToDirEntry(infoOf(nm, ch)))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out, nil
}

// Stat describes name.
func (c *FS) Stat(name string) (fs.FileInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, base, n, err := c.lookup(name)
	if err != nil {
		return nil, err
	}
	if n == nil {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: fs.ErrNotExist}
	}
	return infoOf(base, n), nil
}

// Mkdir creates a directory (durable once its parent is fsynced) with
// permission bits perm.
func (c *FS) Mkdir(name string, perm fs.FileMode) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	parent, base, n, err := c.lookup(name)
	if err != nil {
		return err
	}
	if n != nil {
		return &fs.PathError{Op: "mkdir", Path: name, Err: fs.ErrExist}
	}
	if err := c.mutate("mkdir " + name); err != nil {
		return err
	}
	parent.ents[base] = c.newDir(perm)
	return nil
}

// Remove unlinks a file or an empty directory.
func (c *FS) Remove(name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	parent, base, n, err := c.lookup(name)
	if err != nil {
		return err
	}
	if n == nil || parent == nil {
		return &fs.PathError{Op: "remove", Path: name, Err: fs.ErrNotExist}
	}
	if n.dir && len(n.ents) > 0 {
		return &fs.PathError{Op: "remove", Path: name, Err: syscall.ENOTEMPTY}
	}
	if err := c.mutate("remove " + name); err != nil {
		return err
	}
	delete(parent.ents, base)
	c.unlinked(n)
	return nil
}

// Rename moves oldpath to newpath, replacing a file (or, when oldpath is
// a directory, an empty directory) there, with rename(2)'s rules.
func (c *FS) Rename(oldpath, newpath string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	op, ob, n, err := c.lookup(oldpath)
	if err != nil {
		return err
	}
	if n == nil || op == nil {
		return &fs.PathError{Op: "rename", Path: oldpath, Err: fs.ErrNotExist}
	}
	np, nb, old, err := c.lookup(newpath)
	if err != nil {
		return err
	}
	if np == nil {
		return &fs.PathError{Op: "rename", Path: newpath, Err: syscall.EBUSY}
	}
	switch {
	case old == n:
		// Two names of one inode (see PowerCut): rename(2) does nothing.
		return nil
	case old != nil && old.dir && !n.dir:
		return &fs.PathError{Op: "rename", Path: newpath, Err: syscall.EISDIR}
	case old != nil && !old.dir && n.dir:
		return &fs.PathError{Op: "rename", Path: newpath, Err: syscall.ENOTDIR}
	case old != nil && old.dir && len(old.ents) > 0:
		return &fs.PathError{Op: "rename", Path: newpath, Err: syscall.ENOTEMPTY}
	case n.dir && c.within(np, n):
		// Moving a directory under itself would cut it off the tree.
		return &fs.PathError{Op: "rename", Path: newpath, Err: syscall.EINVAL}
	}
	if err := c.mutate("rename " + oldpath + " " + newpath); err != nil {
		return err
	}
	delete(op.ents, ob)
	np.ents[nb] = n
	if old != nil {
		c.unlinked(old)
	}
	return nil
}

// within reports whether directory d is dir or below it. Caller holds mu.
func (c *FS) within(d, dir *inode) bool {
	if d == dir {
		return true
	}
	for _, ch := range dir.ents {
		if ch.dir && c.within(d, ch) {
			return true
		}
	}
	return false
}

// Truncate changes name's size, as os.Truncate does. Like a write, the
// new size is durable once the file is fsynced.
func (c *FS) Truncate(name string, size int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, _, n, err := c.lookup(name)
	if err != nil {
		return err
	}
	switch {
	case n == nil:
		return &fs.PathError{Op: "truncate", Path: name, Err: fs.ErrNotExist}
	case n.dir:
		return &fs.PathError{Op: "truncate", Path: name, Err: syscall.EISDIR}
	case size < 0:
		return &fs.PathError{Op: "truncate", Path: name, Err: syscall.EINVAL}
	}
	if err := c.mutate(fmt.Sprintf("truncate %s %d", name, size)); err != nil {
		return err
	}
	if !c.resize(n, size) {
		return c.noSpace("truncate", name)
	}
	return nil
}

// Chmod sets name's permission bits. Modes are outside the power-loss
// model (a change is kept by PowerCut at once and is not counted by
// StopAfter): nothing svckit does for durability depends on them, and
// FUSE needs somewhere to keep a chmod.
func (c *FS) Chmod(name string, mode fs.FileMode) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, _, n, err := c.lookup(name)
	if err != nil {
		return err
	}
	if n == nil {
		return &fs.PathError{Op: "chmod", Path: name, Err: fs.ErrNotExist}
	}
	n.mode = mode.Perm()
	return nil
}

// resize sets a file's visible size, zero-filling when it grows, unless
// growing takes more space than is left: then it changes nothing and
// returns false. Caller holds mu.
func (c *FS) resize(n *inode, size int64) bool {
	old := int64(len(n.data))
	if size > old && size-old > c.room() {
		return false
	}
	if size <= old {
		n.data = n.data[:size]
	} else {
		n.data = append(n.data, make([]byte, size-old)...)
	}
	if n.counted() {
		c.used += size - old
	}
	n.mtime = time.Now()
	return true
}

// SyncDir makes the directory's current entries durable.
func (c *FS) SyncDir(name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, _, n, err := c.lookup(name)
	if err != nil {
		return err
	}
	if n == nil || !n.dir {
		return &fs.PathError{Op: "fsync", Path: name, Err: fs.ErrNotExist}
	}
	if err := c.mutate("fsync dir " + name); err != nil {
		return err
	}
	n.dents = make(map[string]*inode, len(n.ents))
	for k, v := range n.ents {
		n.dents[k] = v
	}
	return nil
}
