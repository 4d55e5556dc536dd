//go:build !linux

package durabletest

import "os/exec"

// dieWithParent: only Linux has a parent-death signal; elsewhere Stop is all.
func dieWithParent(cmd *exec.Cmd) {}
