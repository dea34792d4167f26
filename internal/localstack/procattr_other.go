//go:build unix && !linux

package localstack

import (
	"os/exec"
	"syscall"
)

// sysProcAttr puts the child in its own process group. Only Linux can make a
// child die with its parent (PR_SET_PDEATHSIG); elsewhere a program killed
// from outside leaves its children running.
func sysProcAttr(syscall.Signal) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

func startCmd(cmd *exec.Cmd) error { return cmd.Start() }

func killGroup(cmd *exec.Cmd) {
	if cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	_ = cmd.Process.Kill()
}
