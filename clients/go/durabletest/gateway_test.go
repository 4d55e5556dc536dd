package durabletest

// The harness's own guarantees: its config checks, a start that fails carrying the
// gateway's words, and a stop that leaves nothing listening but the log readable.

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestConfigYAMLIsChecked(t *testing.T) {
	for yaml, want := range map[string]string{
		"":                                   "is empty",
		"server:\n  ingress: 127.0.0.1:1\n":  "server section",
		"routes: []\nstorage:\n  url: x\n":   "storage section",
		" \n\t":                              "is empty",
		"routes:\n  - name: a\nserver: {}\n": "server section",
	} {
		_, err := Start("durable-gateway-never-run", Config{YAML: yaml})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("YAML %q: %v, want an error saying %q", yaml, err, want)
		}
	}
	if _, err := Start("", Config{YAML: "routes: []"}); err == nil {
		t.Error("no binary was accepted")
	}
}

func TestStartFailsWithTheGatewaysWords(t *testing.T) {
	bin := needBinary(t)
	_, err := Start(bin, Config{YAML: "routes:\n  - name: broken\n    match: {path: /x}\n"})
	if err == nil || !strings.Contains(err.Error(), "exited before it was healthy") ||
		!strings.Contains(err.Error(), "upstream") {
		t.Fatalf("a route without upstream: %v, want the exit and the gateway's complaint", err)
	}
}

func TestStopEndsTheGatewayAndKeepsItsLog(t *testing.T) {
	bin := needBinary(t)
	ports, err := FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	g, err := Start(bin, Config{YAML: "routes:\n  - name: nowhere\n    match: {path: /x}\n" +
		"    upstream: http://127.0.0.1:" + strconv.Itoa(ports[0]) + "\n"})
	if err != nil {
		t.Fatal(err)
	}
	before := Call(t, http.MethodGet, g.Admin+"/healthz", nil, nil)
	g.Stop()
	g.Stop() // a second Stop does nothing
	if before.Status != http.StatusOK {
		t.Fatalf("healthz before Stop: %d", before.Status)
	}
	probe := &http.Client{Timeout: time.Second}
	if resp, err := probe.Get(g.Admin + "/healthz"); err == nil {
		resp.Body.Close()
		t.Fatalf("the admin listener still answers after Stop: %d", resp.StatusCode)
	}
	if tail := g.LogTail(1 << 10); tail == "" || len(tail) > 1<<10 {
		t.Fatalf("log tail after Stop: %d bytes, want 1 to 1024", len(tail))
	}
}

func needBinary(t *testing.T) string {
	t.Helper()
	bin := Binary()
	if bin == "" {
		t.Skip("durable-gateway not found: put it on PATH or set DURABLE_GATEWAY")
	}
	return bin
}
