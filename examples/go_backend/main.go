// Command go_backend is a Go backend behind Durable Gateway, using the Go client
// (clients/go) and the standard library only: a durable order of a few steps, a durable
// sleep and a wait for an event.
//
// One command, from the repository root:
//
//	cd examples/go_backend && go run . --port 3002 [--fail-step charge] [--settle 5s]
//	                                               [--ship-timeout 1h] [--step-ms 300]
//	durable-gateway --config examples/go_backend.yaml   # routes POST /orders to port 3002
//
// (Go 1.20+ also takes `go -C examples/go_backend run . --port 3002`.)
//
// Endpoints:
//
//	POST /orders   {"order_id": "A-1001", "item": "book", "quantity": 2}: steps "reserve"
//	               and "charge", a durable sleep "settle", a wait "shipped" for the event
//	               order.shipped whose data.order_id is the order's, then a step "confirm"
//	               (or "refund" when the wait timed out); answers the receipt as JSON
//	GET /_counts?run_id=ID   how often each step's work ran in that run
//	GET /_health
//
// While the payment settles and the order waits for its shipment, the attempt ends with
// 202 and no process waits: the gateway calls the request again when the sleep is over
// and when the event is posted to its admin listener (POST /v1/events). Send the order
// with `Prefer: respond-async` and fetch the receipt from the Location the gateway gives.
//
// Failure knob: `X-Fail-Step: reserve|charge|confirm` on a request (or --fail-step for
// every request) fails that step's work on the first attempt (Durable-Attempt: 1); the
// gateway retries, and the next attempt gets the finished steps back instead of redoing
// them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

// options are the command line's settings.
type options struct {
	host, port  string
	step        time.Duration // how long each step's work takes
	settle      time.Duration // the durable sleep before waiting for the shipment
	shipTimeout time.Duration // how long to wait for the shipment before refunding
	failStep    string        // a step to fail on every request's first attempt; "" none
}

func parseOptions(args []string, output io.Writer) (options, error) {
	var o options
	var stepMs int
	flags := flag.NewFlagSet("go_backend", flag.ContinueOnError)
	flags.SetOutput(output)
	flags.StringVar(&o.host, "host", "127.0.0.1", "address to listen on")
	flags.StringVar(&o.port, "port", "3002", "port to listen on (0: any free port)")
	flags.IntVar(&stepMs, "step-ms", 300, "milliseconds each step's work takes")
	flags.DurationVar(&o.settle, "settle", 5*time.Second, "durable sleep while the payment settles")
	flags.DurationVar(&o.shipTimeout, "ship-timeout", time.Hour, "how long to wait for order.shipped (0: forever)")
	flags.StringVar(&o.failStep, "fail-step", "", fmt.Sprintf("fail this step on every first attempt: one of %v", failable))
	if err := flags.Parse(args); err != nil {
		return o, err
	}
	switch port, err := strconv.Atoi(o.port); {
	case flags.NArg() > 0:
		return o, fmt.Errorf("unexpected arguments: %v", flags.Args())
	case err != nil || port < 0 || port > 65535:
		return o, fmt.Errorf("--port must be a number from 0 to 65535, not %q", o.port)
	case stepMs < 0 || stepMs > 600_000:
		return o, errors.New("--step-ms must be from 0 to 600000")
	case o.settle < 0 || o.shipTimeout < 0:
		return o, errors.New("--settle and --ship-timeout must not be negative")
	case o.failStep != "" && !isFailable(o.failStep):
		return o, fmt.Errorf("--fail-step must be one of %v", failable)
	}
	o.step = time.Duration(stepMs) * time.Millisecond
	return o, nil
}

// run serves until ctx ends, then shuts down gracefully; ready is told the bound address.
func run(ctx context.Context, args []string, output io.Writer, ready func(net.Addr)) error {
	opts, err := parseOptions(args, output)
	if err != nil {
		return err
	}
	listener, err := net.Listen("tcp", net.JoinHostPort(opts.host, opts.port))
	if err != nil {
		return err
	}
	server := &http.Server{
		Handler:           newApp(opts).handler(),
		ReadHeaderTimeout: 10 * time.Second,
		// Outlive the gateway's idle keep-alive connections (it drops them after 15 s),
		// so one it reuses is never closed under it.
		IdleTimeout: 65 * time.Second,
	}
	served := make(chan error, 1)
	go func() { served <- server.Serve(listener) }()
	ready(listener.Addr())
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return server.Shutdown(shutdown)
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stderr, func(addr net.Addr) {
		fmt.Printf("listening on %d\n", addr.(*net.TCPAddr).Port)
	})
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		log.Fatalf("go_backend: %v", err)
	}
}
