// Package durabletest runs a real Durable Gateway for the tests of a backend built on
// the Go client (package durable): a durable-gateway process on free loopback ports with
// its own SQLite file, in front of the backend under test, plus the few calls such tests
// make (HTTP calls, polling with a deadline, the admin API's view of a run).
//
// It needs the durable-gateway command (pip install durable-gateway, or this repository's
// `pip install -e .`), found through Binary: $DURABLE_GATEWAY, else PATH. It is for
// tests only; the client library never imports it.
//
//	func TestOrder(t *testing.T) {
//		bin := durabletest.Binary()
//		if bin == "" {
//			t.Skip("durable-gateway not found")
//		}
//		backend := httptest.NewServer(durable.Middleware(mux))
//		defer backend.Close()
//		gw, err := durabletest.Start(bin, durabletest.Config{YAML: `routes:
//	  - name: orders
//	    match: {path: /orders}
//	    upstream: ` + backend.URL})
//		if err != nil {
//			t.Fatal(err)
//		}
//		defer gw.Stop()
//		r := durabletest.Call(t, http.MethodPost, gw.Ingress+"/orders", order, nil)
//		view := gw.AdminRun(t, r.Header.Get("Durable-Run-Id"))
//		...
//	}
package durabletest
