//go:build !linux

package main

import "os/exec"

// dieWithParent: only Linux has a parent-death signal; elsewhere the tests' cleanup is all.
func dieWithParent(cmd *exec.Cmd) {}
