// The pod sandbox's process: it holds the pod's namespaces open and does nothing else. It is PID 1 of
// the pod when the pod shares its process namespace, so it reaps whatever is re-parented to it, and it
// exits 0 on SIGTERM or SIGINT so that a sandbox stops at once instead of waiting out a kill timeout.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGCHLD, syscall.SIGTERM, syscall.SIGINT)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		reap()
	}
}

// reap collects every exited child: signals coalesce, so one SIGCHLD may stand for several exits.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
