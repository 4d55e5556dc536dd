package durabletest

import (
	"os/exec"
	"syscall"
)

// dieWithParent has the kernel kill the gateway when the test process dies, so a test
// binary killed by its timeout leaves no gateway behind.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
