package main

// The example for real: the backend as `go run .` starts it (run, on a free port) behind a
// real durable-gateway process (durabletest) with examples/go_backend.yaml's routes, their
// upstream swapped for the test's. Without durable-gateway (on PATH, or its path in
// $DURABLE_GATEWAY) the test skips; clients/go/test.sh fails on a skip instead.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/durable-gateway/durable-gateway/clients/go/durabletest"
)

// stack is one example backend behind one gateway.
type stack struct {
	backend string
	gw      *durabletest.Gateway
}

// startStack runs the example with args and a gateway in front of it, both stopped when
// the test ends whatever happens.
func startStack(t *testing.T, args ...string) stack {
	t.Helper()
	bin := durabletest.Binary()
	if bin == "" {
		t.Skip("durable-gateway not found: put it on PATH or set DURABLE_GATEWAY")
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

	gw, err := durabletest.Start(bin, durabletest.Config{YAML: exampleRoutes(t, backend)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		gw.Stop()
		if t.Failed() {
			t.Logf("gateway log (last 64 KiB):\n%s", gw.LogTail(64<<10))
		}
	})
	return stack{backend: backend, gw: gw}
}

// exampleRoutes is the routes section of examples/go_backend.yaml, its upstream swapped
// for the test's backend: the test runs the example's own route settings. The file's
// server and storage sections are the harness's to write, and it must have no other.
func exampleRoutes(t *testing.T, upstream string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "go_backend.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	config := string(data)
	at := strings.Index(config, "\nroutes:")
	if at < 0 {
		t.Fatal("examples/go_backend.yaml has no routes section")
	}
	for _, line := range strings.Split(config, "\n") {
		if line == "" || line[0] == ' ' || line[0] == '#' {
			continue
		}
		switch key := strings.SplitN(line, ":", 2)[0]; key {
		case "server", "storage", "routes":
		default:
			t.Fatalf("examples/go_backend.yaml has a section %q the test would not run", key)
		}
	}
	routes := config[at+1:]
	const example = "http://127.0.0.1:3002"
	if n := strings.Count(routes, example); n != 1 {
		t.Fatalf("examples/go_backend.yaml's routes have %q %d times, not once", example, n)
	}
	return strings.Replace(routes, example, upstream, 1)
}

// order sends an order asynchronously: its run id and result URL (the Location).
func (s stack) order(t *testing.T, order Order, header map[string]string) (string, string) {
	t.Helper()
	h := map[string]string{"Prefer": "respond-async"}
	for k, v := range header {
		h[k] = v
	}
	r := durabletest.Call(t, http.MethodPost, s.gw.Ingress+"/orders", order, h)
	if r.Status != http.StatusAccepted {
		t.Fatalf("POST /orders: %d %s", r.Status, r.Body)
	}
	runID, location := r.Header.Get("Durable-Run-Id"), r.Header.Get("Location")
	if runID == "" || location == "" {
		t.Fatalf("POST /orders: no run id or Location: %v", r.Header)
	}
	return runID, location
}

// receipt waits for the run to finish and is its receipt.
func (s stack) receipt(t *testing.T, resultURL string) Receipt {
	t.Helper()
	r := s.gw.Result(t, resultURL)
	if r.Status != http.StatusOK {
		t.Fatalf("result: %d %s", r.Status, r.Body)
	}
	var receipt Receipt
	r.JSON(t, &receipt)
	return receipt
}

func (s stack) counts(t *testing.T, runID string) map[string]int {
	t.Helper()
	var answer struct {
		Counts map[string]int `json:"counts"`
	}
	durabletest.Call(t, http.MethodGet, s.backend+"/_counts?run_id="+url.QueryEscape(runID), nil, nil).JSON(t, &answer)
	return answer.Counts
}

func (s stack) postEvent(t *testing.T, orderID string, data map[string]any) int {
	t.Helper()
	data["order_id"] = orderID
	r := durabletest.Call(t, http.MethodPost, s.gw.Admin+"/v1/events", map[string]any{"name": shippedEvent, "data": data}, nil)
	if r.Status != http.StatusAccepted {
		t.Fatalf("POST /v1/events: %d %s", r.Status, r.Body)
	}
	var answer struct {
		Matched int `json:"matched"`
	}
	r.JSON(t, &answer)
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
	durabletest.Eventually(t, 30*time.Second, func() error {
		view := s.gw.AdminRun(t, runID)
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
	var view durabletest.RunView
	byID := map[string]int{}
	durabletest.Eventually(t, 10*time.Second, func() error {
		view = s.gw.AdminRun(t, runID)
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
