package durable_test

// The harness: one real gateway process for the package's tests, on free ports with its
// own SQLite file, in front of one backend (an httptest.Server using the client's
// middleware). Without durable-gateway the tests that need it skip; test.sh refuses to
// run without it, so CI never skips silently.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// gw is the gateway under test; nil when durable-gateway was not found.
var gw *gateway

// backend is the test backend behind it, reachable directly at backendURL too.
var (
	backend    *testBackend
	backendURL string
)

// client is what the tests call the gateway and the backend with.
var client = &http.Client{Timeout: 60 * time.Second}

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	backend = newTestBackend()
	server := httptest.NewServer(backend.handler())
	defer server.Close()
	backendURL = server.URL
	if bin := gatewayBinary(); bin != "" {
		g, err := startGateway(bin, server.URL)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		gw = g
		defer g.stop()
	}
	code := m.Run()
	if code != 0 && gw != nil {
		fmt.Fprintf(os.Stderr, "--- gateway log (last 8 KiB) ---\n%s\n", gw.logTail(8<<10))
	}
	return code
}

// gatewayBinary is $DURABLE_GATEWAY, else durable-gateway on PATH; "" when neither.
func gatewayBinary() string {
	if path := os.Getenv("DURABLE_GATEWAY"); path != "" {
		return path
	}
	path, err := exec.LookPath("durable-gateway")
	if err != nil {
		return ""
	}
	return path
}

// needGateway skips a test that needs the gateway when there is none.
func needGateway(t *testing.T) {
	t.Helper()
	if gw == nil {
		t.Skip("durable-gateway not found: put it on PATH or set DURABLE_GATEWAY")
	}
}

type gateway struct {
	ingress, admin string
	dir, log       string
	cmd            *exec.Cmd
	exited         chan error
}

// startGateway runs durable-gateway on three free ports with a fresh SQLite file and a
// route /go/* to upstream, and waits for its admin /healthz.
func startGateway(bin, upstream string) (*gateway, error) {
	dir, err := os.MkdirTemp("", "durable-go-")
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(3)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	config := fmt.Sprintf(`server:
  ingress: 127.0.0.1:%d
  sidecar: 127.0.0.1:%d
  admin: 127.0.0.1:%d
  shutdown_grace: 2s
storage:
  url: sqlite:///%s
routes:
  - name: go
    match: {path: /go/*}
    upstream: %s
    hold: 20s
    retry: {initial_backoff: 20ms, max_backoff: 200ms, max_attempts: 4, budget: off}
  - name: go-slow
    match: {path: /go-slow/*}
    upstream: %[5]s
    hold: 20s
    attempt_timeout: 500ms
    retry: {initial_backoff: 20ms, max_attempts: 3, budget: off}
`, ports[0], ports[1], ports[2], filepath.Join(dir, "durable.db"), upstream)
	configPath := filepath.Join(dir, "gateway.yaml")
	if err := os.WriteFile(configPath, []byte(config), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	g := &gateway{
		ingress: fmt.Sprintf("http://127.0.0.1:%d", ports[0]),
		admin:   fmt.Sprintf("http://127.0.0.1:%d", ports[2]),
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
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	go func() { g.exited <- g.cmd.Wait() }()
	if err := g.waitHealthy(30 * time.Second); err != nil {
		g.stop()
		return nil, fmt.Errorf("%w\n%s", err, g.logTail(8<<10))
	}
	return g, nil
}

func (g *gateway) waitHealthy(within time.Duration) error {
	deadline := time.Now().Add(within)
	probe := &http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) {
		select {
		case err := <-g.exited:
			g.exited <- err // stop() waits on it too
			return fmt.Errorf("the gateway exited before it was healthy: %v", err)
		default:
		}
		resp, err := probe.Get(g.admin + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("the gateway was not healthy within %v", within)
}

// stop sends SIGTERM, then SIGKILL when the gateway has not exited within 10 s.
func (g *gateway) stop() {
	_ = g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.exited:
	case <-time.After(10 * time.Second):
		_ = g.cmd.Process.Kill()
		<-g.exited
	}
	os.RemoveAll(g.dir)
}

func (g *gateway) logTail(n int) string {
	data, _ := os.ReadFile(g.log)
	if len(data) > n {
		data = data[len(data)-n:]
	}
	return string(data)
}

func freePorts(n int) ([]int, error) {
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

// --- calls the tests make ---------------------------------------------------------

type reply struct {
	status int
	header http.Header
	body   []byte
}

func (r reply) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("answer %d is not JSON (%v): %s", r.status, err, r.body)
	}
}

func do(t *testing.T, method, target string, body any, header map[string]string) reply {
	t.Helper()
	var reader io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		reader = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, target, reader)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for name, value := range header {
		req.Header.Set(name, value)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		t.Fatalf("%s %s: reading: %v", method, target, err)
	}
	return reply{resp.StatusCode, resp.Header, data}
}

// eventually polls check every 25 ms until it returns nil, failing after within.
func eventually(t *testing.T, within time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %v", within, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// runView is the part of the admin API's run that the tests read.
type runView struct {
	Status string `json:"status"`
	Steps  []struct {
		StepID    string   `json:"step_id"`
		Completed bool     `json:"completed"`
		StartedAt *float64 `json:"started_at"`
		Timing    *string  `json:"timing"`
		Errors    []struct {
			Attempt int    `json:"attempt"`
			Message string `json:"message"`
		} `json:"errors"`
	} `json:"steps"`
}

func adminRun(t *testing.T, runID string) runView {
	t.Helper()
	r := do(t, http.MethodGet, gw.admin+"/v1/runs/"+url.PathEscape(runID), nil, nil)
	if r.status != http.StatusOK {
		t.Fatalf("admin run %s: %d %s", runID, r.status, r.body)
	}
	var view runView
	r.json(t, &view)
	return view
}

// result long-polls a run's result URL until the run has finished.
func result(t *testing.T, location string) reply {
	t.Helper()
	base, _ := url.Parse(gw.ingress)
	ref, err := url.Parse(location)
	if err != nil {
		t.Fatalf("Location %q: %v", location, err)
	}
	target := base.ResolveReference(ref).String()
	var last reply
	eventually(t, 30*time.Second, func() error {
		last = do(t, http.MethodGet, target, nil, map[string]string{"Prefer": "wait=5"})
		if last.status == http.StatusAccepted {
			return errors.New("the run has not finished")
		}
		return nil
	})
	return last
}

func statusesText(s []int) string {
	parts := make([]string, len(s))
	for i, n := range s {
		parts[i] = fmt.Sprint(n)
	}
	return strings.Join(parts, ",")
}
