package localstack

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

// sysProcAttr puts the child in its own process group (so that Kill reaches
// anything it starts) and asks the kernel to send it sig (SIGKILL if 0) when
// its parent dies, so that a program killed by `go test -timeout`, ^C or
// SIGKILL leaves no orphans.
func sysProcAttr(sig syscall.Signal) *syscall.SysProcAttr {
	if sig == 0 {
		sig = syscall.SIGKILL
	}
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: sig}
}

// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not
// the process (golang.org/issue/27505), and the Go runtime does end threads
// (a goroutine that exits while locked to its thread takes the thread with
// it). So children are forked from one goroutine locked to its thread for
// the life of the process.
var spawner struct {
	once sync.Once
	reqs chan func()
}

func startCmd(cmd *exec.Cmd) error {
	spawner.once.Do(func() {
		spawner.reqs = make(chan func())
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives as long as the process
			for f := range spawner.reqs {
				f()
			}
		}()
	})
	errc := make(chan error, 1)
	spawner.reqs <- func() { errc <- cmd.Start() }
	return <-errc
}

func killGroup(cmd *exec.Cmd) {
	if cmd.Process == nil {
		return
	}
	// The group first (pgid == pid thanks to Setpgid), then the process itself
	// in case it left the group.
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	_ = cmd.Process.Kill()
}
