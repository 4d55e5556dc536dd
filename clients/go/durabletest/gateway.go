package durabletest

// The gateway process: started on free ports with a fresh SQLite file, healthy before
// Start returns, stopped (SIGTERM, then SIGKILL after a bound) by Stop.

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// healthyWithin bounds the wait for a new gateway's admin /healthz.
	healthyWithin = 30 * time.Second
	// stopWithin is how long Stop lets the gateway shut down after SIGTERM before SIGKILL.
	stopWithin = 10 * time.Second
	// keptLog is how much of the log LogTail can still give after Stop removed the file.
	keptLog = 1 << 20
)

// Binary is the durable-gateway to run: $DURABLE_GATEWAY when set, else durable-gateway
// on PATH; "" when neither, so a test can skip (or a CI script fail) with its own words.
func Binary() string {
	if path := os.Getenv("DURABLE_GATEWAY"); path != "" {
		return path
	}
	path, err := exec.LookPath("durable-gateway")
	if err != nil {
		return ""
	}
	return path
}

// Config is what one test's gateway differs in. Start writes the server section (the
// listeners on free loopback ports, a short shutdown grace) and the storage section (a
// fresh SQLite file) itself.
type Config struct {
	// YAML is the rest of the config file: routes, pointing at the backend under test,
	// and any other top-level section but server and storage (defaults, security, ...).
	YAML string
}

// Gateway is a durable-gateway process started by Start. Call Stop when done with it.
type Gateway struct {
	// Ingress, Sidecar and Admin are the listeners' base URLs, as http://127.0.0.1:PORT.
	Ingress, Sidecar, Admin string

	dir    string // the config, the SQLite file and the log; removed by Stop
	log    string
	cmd    *exec.Cmd
	exited chan error // the process's exit, once; whoever takes it puts it back

	mu      sync.Mutex
	stopped bool
	kept    string // the log's last keptLog bytes, read by Stop before removing dir
}

// Start runs bin (see Binary) with cfg and waits until its admin /healthz answers 200.
// On error nothing is left running or on disk; the error carries the log's tail.
func Start(bin string, cfg Config) (*Gateway, error) {
	if bin == "" {
		return nil, errors.New("durabletest: no durable-gateway: put it on PATH or set DURABLE_GATEWAY")
	}
	if err := checkYAML(cfg.YAML); err != nil {
		return nil, err
	}
	ports, err := FreePorts(3)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "durabletest-")
	if err != nil {
		return nil, err
	}
	config := fmt.Sprintf(`# A test's gateway, written by durabletest.
server:
  ingress: 127.0.0.1:%d
  sidecar: 127.0.0.1:%d
  admin: 127.0.0.1:%d
  shutdown_grace: 2s
storage:
  url: sqlite:///%s
%s
`, ports[0], ports[1], ports[2], filepath.Join(dir, "durable.db"), cfg.YAML)
	configPath := filepath.Join(dir, "gateway.yaml")
	if err := os.WriteFile(configPath, []byte(config), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	g := &Gateway{
		Ingress: fmt.Sprintf("http://127.0.0.1:%d", ports[0]),
		Sidecar: fmt.Sprintf("http://127.0.0.1:%d", ports[1]),
		Admin:   fmt.Sprintf("http://127.0.0.1:%d", ports[2]),
		dir:     dir,
		log:     filepath.Join(dir, "gateway.log"),
		exited:  make(chan error, 1),
	}
	logFile, err := os.Create(g.log)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	defer logFile.Close() // the child keeps its own descriptor
	g.cmd = exec.Command(bin, "--config", configPath)
	g.cmd.Stdout, g.cmd.Stderr = logFile, logFile
	dieWithParent(g.cmd)
	if err := g.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("durabletest: starting %s: %w", bin, err)
	}
	go func() { g.exited <- g.cmd.Wait() }()
	if err := g.waitHealthy(); err != nil {
		g.Stop()
		return nil, fmt.Errorf("durabletest: %w\n--- gateway log (last 8 KiB) ---\n%s", err, g.LogTail(8<<10))
	}
	return g, nil
}

// checkYAML refuses the sections Start writes itself: the gateway would reject the
// duplicate key, further from the cause.
func checkYAML(yaml string) error {
	if strings.TrimSpace(yaml) == "" {
		return errors.New("durabletest: Config.YAML is empty: the gateway needs at least one route")
	}
	for _, line := range strings.Split(yaml, "\n") {
		for _, key := range []string{"server", "storage"} {
			if strings.HasPrefix(line, key+":") {
				return fmt.Errorf("durabletest: Config.YAML has a %s section: Start writes it", key)
			}
		}
	}
	return nil
}

func (g *Gateway) waitHealthy() error {
	deadline := time.Now().Add(healthyWithin)
	probe := &http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) {
		select {
		case err := <-g.exited:
			g.exited <- err // Stop waits on it too
			return fmt.Errorf("the gateway exited before it was healthy: %v", err)
		default:
		}
		resp, err := probe.Get(g.Admin + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("the gateway was not healthy within %v", healthyWithin)
}

// Stop ends the gateway (SIGTERM, then SIGKILL when it has not exited within 10 s) and
// removes its files. Calling it again does nothing.
func (g *Gateway) Stop() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return
	}
	g.stopped = true
	if err := g.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		_ = g.cmd.Process.Kill() // no SIGTERM here (Windows), or already gone
	}
	select {
	case <-g.exited:
	case <-time.After(stopWithin):
		_ = g.cmd.Process.Kill()
		<-g.exited
	}
	g.kept = tail(g.log, keptLog)
	os.RemoveAll(g.dir)
}

// LogTail is the last n bytes of the gateway's output (at most the last 1 MiB after Stop).
func (g *Gateway) LogTail(n int) string {
	g.mu.Lock()
	stopped, kept := g.stopped, g.kept
	g.mu.Unlock()
	if !stopped {
		return tail(g.log, n)
	}
	if len(kept) > n {
		kept = kept[len(kept)-n:]
	}
	return kept
}

// tail reads the last n bytes of the file at path; "" when it cannot.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return ""
	}
	offset := info.Size() - int64(n)
	if offset < 0 {
		offset = 0
	}
	data := make([]byte, info.Size()-offset)
	read, _ := f.ReadAt(data, offset)
	return string(data[:read])
}

// FreePorts is n distinct loopback ports free at the time of the call.
func FreePorts(n int) ([]int, error) {
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close() // all held until the end, so the n ports differ
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
