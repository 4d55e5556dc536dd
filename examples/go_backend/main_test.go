package main

// The example for real: the backend as `go run .` starts it (run, on a free port) behind a
// real durable-gateway process started with examples/go_backend.yaml, its ports, store
// and upstream swapped for the test's. Without durable-gateway (on PATH, or its path in
// $DURABLE_GATEWAY) the test skips; clients/go/test.sh fails on a skip instead.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

var client = &http.Client{Timeout: 30 * time.Second}

// stack is one example backend behind one gateway.
type stack struct {
	backend, ingress, admin string
}

// startStack runs the example with args and a gateway in front of it, both stopped when
// the test ends whatever happens.
func startStack(t *testing.T, args ...string) stack {
	t.Helper()
	bin := os.Getenv("DURABLE_GATEWAY")
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("durable-gateway"); err != nil {
			t.Skip("durable-gateway not found: put it on PATH or set DURABLE_GATEWAY")
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	ready, served := make(chan net.Addr, 1), make(chan error, 1)
	go func() {
		served <- run(ctx, append([]string{"--port", "0"}, args...), io.Discard, func(a net.Addr) { ready <- a })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("the example's server: %v", err)
		}
	})
	var backend string
	select {
	case addr := <-ready:
		backend = "http://" + addr.String()
	case err := <-served:
		t.Fatalf("the example did not start: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the example did not start within 10 s")
	}

	dir := t.TempDir()
	ports := freePorts(t, 3)
	s := stack{
		backend: backend,
		ingress: fmt.Sprintf("http://127.0.0.1:%d", ports[0]),
		admin:   fmt.Sprintf("http://127.0.0.1:%d", ports[2]),
	}
	config := exampleConfig(t, map[string]string{
		"ingress: 127.0.0.1:8080":   fmt.Sprintf("ingress: 127.0.0.1:%d", ports[0]),
		"sidecar: 127.0.0.1:8081":   fmt.Sprintf("sidecar: 127.0.0.1:%d", ports[1]),
		"admin: 127.0.0.1:8082":     fmt.Sprintf("admin: 127.0.0.1:%d\n  shutdown_grace: 2s", ports[2]),
		"sqlite:///./go_backend.db": "sqlite:///" + filepath.Join(dir, "durable.db"),
		"http://127.0.0.1:3002":     backend,
	})
	configPath := filepath.Join(dir, "gateway.yaml")
	if err := os.WriteFile(configPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	log, err := os.Create(filepath.Join(dir, "gateway.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close() // the child has its own descriptor
	cmd := exec.Command(bin, "--config", configPath)
	cmd.Stdout, cmd.Stderr = log, log
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			data, _ := os.ReadFile(log.Name())
			t.Logf("gateway log:\n%s", data)
		}
	})
	eventually(t, 30*time.Second, func() error {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("the gateway exited: %v", err)
		default:
		}
		resp, err := (&http.Client{Timeout: time.Second}).Get(s.admin + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("healthz answered %d", resp.StatusCode)
		}
		return nil
	})
	return s
}

// exampleConfig is examples/go_backend.yaml with each key of swaps, which must occur in
// it exactly once, replaced: the test runs the example's own route settings.
func exampleConfig(t *testing.T, swaps map[string]string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "go_backend.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	config := string(data)
	for old, replacement := range swaps {
		if n := strings.Count(config, old); n != 1 {
			t.Fatalf("examples/go_backend.yaml has %q %d times, not once", old, n)
		}
		config = strings.Replace(config, old, replacement, 1)
	}
	return config
}

func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close() // all held until the end, so the n ports differ
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
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

type reply struct {
	status int
	header http.Header
	body   []byte
}

func call(t *testing.T, method, target string, body any, header map[string]string) reply {
	t.Helper()
	var reader io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		reader = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, target, reader)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for name, value := range header {
		req.Header.Set(name, value)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("%s %s: reading: %v", method, target, err)
	}
	return reply{resp.StatusCode, resp.Header, data}
}

func decode(t *testing.T, r reply, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("answer %d is not the JSON expected (%v): %s", r.status, err, r.body)
	}
}

// runView is the part of the admin API's run that the test reads.
type runView struct {
	Status     string `json:"status"`
	Suspension *struct {
		Kind   string `json:"kind"`
		StepID string `json:"step_id"`
	} `json:"suspension"`
	Steps []struct {
		StepID    string `json:"step_id"`
		Completed bool   `json:"completed"`
		Attempt   int    `json:"attempt"`
		Errors    []struct {
			Attempt int    `json:"attempt"`
			Message string `json:"message"`
		} `json:"errors"`
	} `json:"steps"`
}

func (s stack) run(t *testing.T, runID string) runView {
	t.Helper()
	r := call(t, http.MethodGet, s.admin+"/v1/runs/"+url.PathEscape(runID), nil, nil)
	if r.status != http.StatusOK {
		t.Fatalf("admin run %s: %d %s", runID, r.status, r.body)
	}
	var view runView
	decode(t, r, &view)
	return view
}

// order sends an order asynchronously: its run id and result URL.
func (s stack) order(t *testing.T, order Order, header map[string]string) (string, string) {
	t.Helper()
	h := map[string]string{"Prefer": "respond-async"}
	for k, v := range header {
		h[k] = v
	}
	r := call(t, http.MethodPost, s.ingress+"/orders", order, h)
	if r.status != http.StatusAccepted {
		t.Fatalf("POST /orders: %d %s", r.status, r.body)
	}
	location, err := url.Parse(r.header.Get("Location"))
	if err != nil || r.header.Get("Durable-Run-Id") == "" {
		t.Fatalf("POST /orders: no run id or Location: %v", r.header)
	}
	base, _ := url.Parse(s.ingress)
	return r.header.Get("Durable-Run-Id"), base.ResolveReference(location).String()
}

// receipt long-polls a result URL until the run has finished.
func (s stack) receipt(t *testing.T, resultURL string) Receipt {
	t.Helper()
	var last reply
	eventually(t, 30*time.Second, func() error {
		last = call(t, http.MethodGet, resultURL, nil, map[string]string{"Prefer": "wait=5"})
		if last.status == http.StatusAccepted {
			return errors.New("the run has not finished")
		}
		return nil
	})
	if last.status != http.StatusOK {
		t.Fatalf("result: %d %s", last.status, last.body)
	}
	var receipt Receipt
	decode(t, last, &receipt)
	return receipt
}

func (s stack) counts(t *testing.T, runID string) map[string]int {
	t.Helper()
	var answer struct {
		Counts map[string]int `json:"counts"`
	}
	decode(t, call(t, http.MethodGet, s.backend+"/_counts?run_id="+url.QueryEscape(runID), nil, nil), &answer)
	return answer.Counts
}

func (s stack) postEvent(t *testing.T, orderID string, data map[string]any) int {
	t.Helper()
	data["order_id"] = orderID
	r := call(t, http.MethodPost, s.admin+"/v1/events", map[string]any{"name": shippedEvent, "data": data}, nil)
	if r.status != http.StatusAccepted {
		t.Fatalf("POST /v1/events: %d %s", r.status, r.body)
	}
	var answer struct {
		Matched int `json:"matched"`
	}
	decode(t, r, &answer)
	return answer.Matched
}

func equalCounts(got, want map[string]int) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

func TestAnOrderResumesPastItsFailedStepThenSleepsWaitsAndConfirms(t *testing.T) {
	s := startStack(t, "--step-ms", "20", "--settle", "1s", "--ship-timeout", "5m")
	orderID := fmt.Sprintf("T-%d", time.Now().UnixNano())
	runID, resultURL := s.order(t, Order{OrderID: orderID, Item: "book", Quantity: 2},
		map[string]string{"X-Fail-Step": "charge"})

	// Attempt 1 fails at charge; attempt 2 charges without reserving again and sleeps;
	// once the sleep is over the run waits for the shipment, with no process waiting.
	eventually(t, 30*time.Second, func() error {
		view := s.run(t, runID)
		if view.Status != "suspended" || view.Suspension == nil || view.Suspension.StepID != "shipped" {
			return fmt.Errorf("not waiting for the shipment yet: %s %+v", view.Status, view.Suspension)
		}
		return nil
	})
	if got := s.counts(t, runID); !equalCounts(got, map[string]int{"reserve": 1, "charge": 2}) {
		t.Fatalf("step work so far: %v, want reserve once and charge twice (failed, then done)", got)
	}

	if n := s.postEvent(t, "other-"+orderID, map[string]any{"tracking": "nope"}); n != 0 {
		t.Fatalf("another order's shipment woke %d runs", n)
	}
	if n := s.postEvent(t, orderID, map[string]any{"tracking": "1Z999"}); n != 1 {
		t.Fatalf("the shipment matched %d runs, want 1", n)
	}
	receipt := s.receipt(t, resultURL)
	if receipt.Status != "shipped" || receipt.OrderID != orderID || receipt.RunID != runID {
		t.Fatalf("receipt: %+v", receipt)
	}
	var shipment map[string]string
	if err := json.Unmarshal(receipt.Shipment, &shipment); err != nil || shipment["tracking"] != "1Z999" {
		t.Fatalf("shipment %s (%v), want the event's data", receipt.Shipment, err)
	}
	if receipt.Charge.AmountCents != 2*priceCents || receipt.Charge.IdempotencyKey != runID+"/charge" {
		t.Fatalf("charge: %+v", receipt.Charge)
	}
	if receipt.Notice.Kind != "confirmation" || !strings.HasPrefix(receipt.Reservation.ID, "rsv_") {
		t.Fatalf("receipt: %+v", receipt)
	}
	if got := s.counts(t, runID); !equalCounts(got, map[string]int{"reserve": 1, "charge": 2, "confirm": 1}) {
		t.Fatalf("step work: %v, want each step's once but charge's failed try", got)
	}

	// The runs API, once the run's last writes are committed (they follow the answer):
	// reserve done by attempt 1, charge by a later one after one failed try.
	var view runView
	byID := map[string]int{}
	eventually(t, 10*time.Second, func() error {
		view = s.run(t, runID)
		for i, step := range view.Steps {
			byID[step.StepID] = i
		}
		for _, id := range []string{"reserve", "charge", "settle", "shipped", "confirm"} {
			if i, ok := byID[id]; !ok || !view.Steps[i].Completed {
				return fmt.Errorf("step %s not completed: %+v", id, view.Steps)
			}
		}
		return nil
	})
	reserve, charge := view.Steps[byID["reserve"]], view.Steps[byID["charge"]]
	if reserve.Attempt != 1 || len(reserve.Errors) != 0 {
		t.Fatalf("reserve: %+v", reserve)
	}
	if charge.Attempt < 2 || len(charge.Errors) != 1 || charge.Errors[0].Attempt != 1 ||
		!strings.Contains(charge.Errors[0].Message, "simulated outage") {
		t.Fatalf("charge: %+v", charge)
	}
}

func TestAnOrderNeverShippedIsRefunded(t *testing.T) {
	s := startStack(t, "--step-ms", "0", "--settle", "100ms", "--ship-timeout", "1s")
	runID, resultURL := s.order(t, Order{OrderID: fmt.Sprintf("R-%d", time.Now().UnixNano()), Item: "lamp", Quantity: 1}, nil)
	receipt := s.receipt(t, resultURL)
	if receipt.Status != "refunded" || string(receipt.Shipment) != "null" || receipt.Notice.Kind != "refund" {
		t.Fatalf("receipt: %+v (shipment %s)", receipt, receipt.Shipment)
	}
	if got := s.counts(t, runID); !equalCounts(got, map[string]int{"reserve": 1, "charge": 1, "refund": 1}) {
		t.Fatalf("step work: %v", got)
	}
}

func TestOptionsAreChecked(t *testing.T) {
	for _, args := range [][]string{
		{"--port", "70000"}, {"--port", "x"}, {"--step-ms", "-1"}, {"--settle", "-1s"},
		{"--fail-step", "ship"}, {"extra"},
	} {
		if _, err := parseOptions(args, io.Discard); err == nil {
			t.Errorf("%v was accepted", args)
		}
	}
	o, err := parseOptions([]string{"--fail-step", "charge", "--step-ms", "5"}, io.Discard)
	if err != nil || o.failStep != "charge" || o.step != 5*time.Millisecond || o.port != "3002" {
		t.Fatalf("%+v, %v", o, err)
	}
}
