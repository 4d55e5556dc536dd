package durable_test

// The harness: one real gateway process for the package's tests (durabletest), on free
// ports with its own SQLite file, in front of one backend (an httptest.Server using the
// client's middleware). Without durable-gateway the tests that need it skip; test.sh
// refuses to run without it, so CI never skips silently.

import (
	"fmt"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/durable-gateway/durable-gateway/clients/go/durabletest"
)

// gw is the gateway under test; nil when durable-gateway was not found.
var gw *durabletest.Gateway

// backend is the test backend behind it, reachable directly at backendURL too.
var (
	backend    *testBackend
	backendURL string
)

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	backend = newTestBackend()
	server := httptest.NewServer(backend.handler())
	defer server.Close()
	backendURL = server.URL
	if bin := durabletest.Binary(); bin != "" {
		g, err := durabletest.Start(bin, durabletest.Config{YAML: routes(server.URL)})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		gw = g
		defer g.Stop()
	}
	code := m.Run()
	if code != 0 && gw != nil {
		fmt.Fprintf(os.Stderr, "--- gateway log (last 8 KiB) ---\n%s\n", gw.LogTail(8<<10))
	}
	return code
}

// routes sends /go/* to upstream with quick retries, and /go-slow/* too with an attempt
// timeout short enough to supersede an attempt.
func routes(upstream string) string {
	return fmt.Sprintf(`routes:
  - name: go
    match: {path: /go/*}
    upstream: %s
    hold: 20s
    retry: {initial_backoff: 20ms, max_backoff: 200ms, max_attempts: 4, budget: off}
  - name: go-slow
    match: {path: /go-slow/*}
    upstream: %[1]s
    hold: 20s
    attempt_timeout: 500ms
    retry: {initial_backoff: 20ms, max_attempts: 3, budget: off}
`, upstream)
}

// needGateway skips a test that needs the gateway when there is none.
func needGateway(t *testing.T) {
	t.Helper()
	if gw == nil {
		t.Skip("durable-gateway not found: put it on PATH or set DURABLE_GATEWAY")
	}
}

func statusesText(s []int) string {
	parts := make([]string, len(s))
	for i, n := range s {
		parts[i] = fmt.Sprint(n)
	}
	return strings.Join(parts, ",")
}
