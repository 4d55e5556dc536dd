// Package durable is the Go client of Durable Gateway's step protocol (version 2,
// step_protocol/SPEC.md): a backend behind the gateway records each step's output
// through the run's sidecar, so a retried request resumes at the step that failed.
//
// It mirrors the reference Python client's explicit design: a *Run made from the
// request's Durable-* headers, Step for work whose result must not be produced twice,
// Run.Sleep and Run.WaitForEvent that suspend the run instead of holding a process.
// Outside the gateway (no Durable-* headers) steps simply run and nothing is recorded.
//
//	mux.HandleFunc("/api/order", func(w http.ResponseWriter, r *http.Request) {
//		run := durable.FromContext(r.Context())
//		quote, err := durable.Step(r.Context(), run, "quote", func(ctx context.Context) (Quote, error) {
//			return pricing.Quote(ctx, sku)
//		})
//		if err != nil {
//			http.Error(w, err.Error(), http.StatusServiceUnavailable) // the gateway retries
//			return
//		}
//		...
//	})
//	http.ListenAndServe(":8000", durable.Middleware(mux))
//
// Standard library only; never keeps state between requests except the shared
// keep-alive HTTP client of a Client.
package durable
