package main

// The durable order handler: reserve stock, charge the card, let the payment settle (a
// durable sleep), wait for the warehouse's "order.shipped" event, then confirm, or
// refund when it never comes. Each effect is a step, so a retried request skips what
// an earlier attempt finished; the services it calls are simulated below.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"regexp"
	"sync"
	"time"

	durable "github.com/durable-gateway/durable-gateway/clients/go"
)

// The steps a failure knob can name, in the order they run.
var failable = []string{"reserve", "charge", "confirm"}

const (
	maxBody        = 64 << 10
	maxQuantity    = 1000
	priceCents     = 1250   // every item costs the same in this shop
	maxCountedRuns = 10_000 // runs whose step counts are kept, oldest dropped first
	shippedEvent   = "order.shipped"
)

var orderIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Order is a request's body.
type Order struct {
	OrderID  string `json:"order_id"`
	Item     string `json:"item"`
	Quantity int    `json:"quantity"`
}

func (o Order) check() error {
	switch {
	case !orderIDPattern.MatchString(o.OrderID):
		return errors.New("order_id must be 1 to 64 of A-Z a-z 0-9 _ -")
	case o.Item == "" || len(o.Item) > 100:
		return errors.New("item must be a string of 1 to 100 bytes")
	case o.Quantity < 1 || o.Quantity > maxQuantity:
		return fmt.Errorf("quantity must be from 1 to %d", maxQuantity)
	}
	return nil
}

// Step outputs: JSON round trips, as a retry gets them back decoded.
type (
	Reservation struct {
		ID       string `json:"id"`
		Item     string `json:"item"`
		Quantity int    `json:"quantity"`
	}
	Charge struct {
		ID             string `json:"id"`
		AmountCents    int    `json:"amount_cents"`
		IdempotencyKey string `json:"idempotency_key"`
	}
	Notice struct {
		Kind string `json:"kind"` // "confirmation" or "refund"
		ID   string `json:"id"`
	}
)

// Receipt is the answer to a finished order.
type Receipt struct {
	OrderID     string          `json:"order_id"`
	RunID       string          `json:"run_id"`
	Attempt     int             `json:"attempt"`
	Status      string          `json:"status"` // "shipped" or "refunded"
	Reservation Reservation     `json:"reservation"`
	Charge      Charge          `json:"charge"`
	Shipment    json.RawMessage `json:"shipment"` // the event's data; null when refunded
	Notice      Notice          `json:"notice"`
}

// app is the backend: its settings, and how often each step's work ran per run.
type app struct {
	opts options

	mu     sync.Mutex
	counts map[string]map[string]int // run id ("none" outside the gateway) -> step -> runs
	order  []string                  // run ids in the order first counted
}

func newApp(opts options) *app {
	return &app{opts: opts, counts: map[string]map[string]int{}}
}

// handler routes the backend's endpoints; only /orders is durable.
func (a *app) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/orders", durable.Middleware(http.HandlerFunc(a.orders)))
	mux.HandleFunc("/_counts", a.countsEndpoint)
	mux.HandleFunc("/_health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
	})
	return mux
}

// orders runs one attempt of an order. Every step is written the same way: its work
// runs only when no earlier attempt of the run finished it.
func (a *app) orders(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "use POST"})
		return
	}
	order, failing, err := readOrder(w, r, a.opts.failStep)
	if err != nil {
		status := http.StatusBadRequest
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			status = http.StatusRequestEntityTooLarge
		}
		writeJSON(w, status, map[string]string{"error": err.Error()})
		return
	}
	ctx, run := r.Context(), durable.FromContext(r.Context())
	// work counts a step's work and fails it on the first attempt when the knob says so.
	work := func(step string) error {
		a.count(run.RunID(), step)
		if step == failing && run.Attempt() == 1 {
			return pause(ctx, a.opts.step, fmt.Errorf("simulated outage: step %s failed on attempt %d", step, run.Attempt()))
		}
		return pause(ctx, a.opts.step, nil)
	}

	reservation, err := durable.Step(ctx, run, "reserve", func(ctx context.Context) (Reservation, error) {
		if err := work("reserve"); err != nil {
			return Reservation{}, err
		}
		return Reservation{ID: newID("rsv"), Item: order.Item, Quantity: order.Quantity}, nil
	})
	if err != nil {
		a.fail(w, run, err)
		return
	}
	charge, err := durable.Step(ctx, run, "charge", func(ctx context.Context) (Charge, error) {
		if err := work("charge"); err != nil {
			return Charge{}, err
		}
		// The run id and step id make the provider's idempotency key: a charge made by
		// an attempt that died before its step was recorded is not made twice.
		return Charge{ID: newID("ch"), AmountCents: order.Quantity * priceCents, IdempotencyKey: run.RunID() + "/charge"}, nil
	}, durable.Sync()) // money moved: answered only once the gateway has committed it
	if err != nil {
		a.fail(w, run, err)
		return
	}
	// The payment settles before the warehouse is told: no process waits meanwhile.
	if err := run.Sleep(ctx, "settle", a.opts.settle); err != nil {
		a.fail(w, run, err)
		return
	}
	shipped, err := run.WaitForEvent(ctx, "shipped", durable.Wait{
		Event:    shippedEvent,
		Match:    map[string]any{"data.order_id": order.OrderID},
		Timeout:  a.opts.shipTimeout,
		Lookback: a.opts.settle + time.Minute, // a warehouse that ships during the settling counts
	})
	if err != nil {
		a.fail(w, run, err)
		return
	}
	receipt := Receipt{
		OrderID: order.OrderID, RunID: run.RunID(), Attempt: run.Attempt(),
		Reservation: reservation, Charge: charge, Shipment: json.RawMessage("null"),
	}
	if shipped != nil {
		receipt.Status, receipt.Shipment = "shipped", shipped.Data
		receipt.Notice, err = durable.Step(ctx, run, "confirm", func(ctx context.Context) (Notice, error) {
			if err := work("confirm"); err != nil {
				return Notice{}, err
			}
			return Notice{Kind: "confirmation", ID: newID("msg")}, nil
		})
	} else {
		receipt.Status = "refunded"
		receipt.Notice, err = durable.Step(ctx, run, "refund", func(ctx context.Context) (Notice, error) {
			if err := work("refund"); err != nil {
				return Notice{}, err
			}
			return Notice{Kind: "refund", ID: newID("re")}, nil
		})
	}
	if err != nil {
		a.fail(w, run, err)
		return
	}
	writeJSON(w, http.StatusOK, receipt)
}

// fail ends an attempt that could not go on. A suspension is no failure: the middleware
// answers it. Anything else is a 503, which the gateway retries.
func (a *app) fail(w http.ResponseWriter, run *durable.Run, err error) {
	if durable.IsSuspend(err) {
		return
	}
	if errors.Is(err, durable.ErrNotDurable) { // called directly: no gateway to deliver the event
		writeJSON(w, http.StatusNotImplemented, map[string]string{"error": err.Error()})
		return
	}
	var stale *durable.StaleAttempt
	if !errors.As(err, &stale) { // a newer attempt took over: nothing to log
		log.Printf("order: attempt %d of run %q: %v", run.Attempt(), run.RunID(), err)
	}
	writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
}

// readOrder decodes and checks the body, and reads the X-Fail-Step knob.
func readOrder(w http.ResponseWriter, r *http.Request, failStep string) (Order, string, error) {
	var order Order
	decoder := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	decoder.DisallowUnknownFields()
	if err := decoder.Decode(&order); err != nil {
		return order, "", fmt.Errorf("the body must be a JSON order of at most %d bytes: %w", maxBody, err)
	}
	if err := order.check(); err != nil {
		return order, "", err
	}
	if knob := r.Header.Get("X-Fail-Step"); knob != "" {
		if !isFailable(knob) {
			return order, "", fmt.Errorf("X-Fail-Step must be one of %v", failable)
		}
		failStep = knob
	}
	return order, failStep, nil
}

func isFailable(step string) bool {
	for _, s := range failable {
		if s == step {
			return true
		}
	}
	return false
}

// pause stands for a call to another service: it takes d, then returns err.
func pause(ctx context.Context, d time.Duration, err error) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// newID is a random id, different on every call: what makes memoizing the step matter.
func newID(prefix string) string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return prefix + "_" + hex.EncodeToString(b[:])
}

func (a *app) count(runID, step string) {
	if runID == "" {
		runID = "none"
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.counts[runID] == nil {
		if len(a.order) >= maxCountedRuns {
			delete(a.counts, a.order[0])
			a.order = a.order[1:]
		}
		a.counts[runID] = map[string]int{}
		a.order = append(a.order, runID)
	}
	a.counts[runID][step]++
}

// countsEndpoint: GET /_counts?run_id=ID, how often each step's work ran in that run.
func (a *app) countsEndpoint(w http.ResponseWriter, r *http.Request) {
	runID := r.URL.Query().Get("run_id")
	if r.Method != http.MethodGet || runID == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "GET /_counts?run_id=ID"})
		return
	}
	a.mu.Lock()
	counts := map[string]int{}
	for step, n := range a.counts[runID] {
		counts[step] = n
	}
	a.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"counts": counts})
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	data, err := json.Marshal(body)
	if err != nil {
		status, data = http.StatusInternalServerError, []byte(`{"error":"answer not JSON"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(data)
}
