package durable

// Calls to the run's sidecar API (SPEC.md §4): one shared keep-alive HTTP client, a
// deadline on every call, bounded reads of the answers, refusals turned into errors.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// DefaultTimeout bounds one sidecar call; a ?durable=sync write waits for a commit.
const DefaultTimeout = 30 * time.Second

// Client makes the sidecar calls of the runs it opens, over one keep-alive connection
// pool. Create one per process (the package functions use a default one) and share it.
type Client struct {
	http    *http.Client
	timeout time.Duration
}

// NewClient returns a Client whose sidecar calls each take at most timeout.
func NewClient(timeout time.Duration) *Client {
	if timeout <= 0 {
		panic(fmt.Sprintf("durable: NewClient timeout must be positive, not %v", timeout))
	}
	transport := &http.Transport{
		Proxy:               nil, // the sidecar is local: never through HTTP_PROXY
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 64, // the sidecar is one host: keep its connections
		IdleConnTimeout:     60 * time.Second,
	}
	return &Client{http: &http.Client{
		Transport: transport,
		Timeout:   timeout,
		// The sidecar never redirects: a 3xx is a refusal, and the token stays put.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}, timeout: timeout}
}

var defaultClient = NewClient(DefaultTimeout)

// SidecarError is a sidecar call that was refused or could not be made; the step was
// not recorded. Let the handler fail (answer 5xx) so the gateway retries the request.
type SidecarError struct {
	// Status is the HTTP status, 0 when the sidecar could not be reached.
	Status int
	// Type is the problem's slug ("too-large", "bad-request", …), "" when none.
	Type string
	// Detail explains this occurrence: the problem's detail or title, or the cause.
	Detail string
	// Problem is the problem+json body as sent, nil when there was none.
	Problem map[string]any
	// Err is the transport error when Status is 0.
	Err error
}

func (e *SidecarError) Error() string {
	if e.Status == 0 {
		return "durable: sidecar unreachable: " + e.Detail
	}
	return fmt.Sprintf("durable: sidecar answered %d: %s", e.Status, e.Detail)
}

func (e *SidecarError) Unwrap() error { return e.Err }

// StaleAttempt means a newer attempt of the run has started, so this one's writes are
// refused (SPEC.md §5): nothing it does counts any more; end the handler. errors.As
// finds the *SidecarError inside it too.
type StaleAttempt struct {
	*SidecarError
}

func (e *StaleAttempt) Unwrap() error { return e.SidecarError }

// refusal reads a non-2xx answer into a *SidecarError or a *StaleAttempt.
func refusal(status int, body []byte) error {
	e := &SidecarError{Status: status, Detail: http.StatusText(status)}
	var problem map[string]any
	if json.Unmarshal(body, &problem) == nil && problem != nil {
		e.Problem = problem
		if t, ok := problem["type"].(string); ok {
			e.Type = problemSlug(t)
		}
		if d, ok := problem["detail"].(string); ok && d != "" {
			e.Detail = d
		} else if t, ok := problem["title"].(string); ok && t != "" {
			e.Detail = t
		}
	} else if len(body) > 0 {
		text := body
		if len(text) > 500 {
			text = text[:500]
		}
		e.Detail = string(bytes.ToValidUTF8(text, []byte("\uFFFD")))
	}
	if status == http.StatusConflict && e.Type == problemStale {
		return &StaleAttempt{e}
	}
	return e
}

// answer is one sidecar answer: its status and its body, read whole up to a bound.
type answer struct {
	status int
	body   []byte
}

// call makes one sidecar call with the run's token; body nil means none. The answer's
// body is read up to maxAnswer bytes (maxProblem for a refusal) and never further.
func (run *Run) call(ctx context.Context, method, path string, body []byte) (answer, error) {
	ctx, cancel := context.WithTimeout(ctx, run.client.timeout)
	defer cancel()
	var reader io.Reader
	if body != nil {
		reader = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, run.sidecar+path, reader)
	if err != nil {
		return answer{}, &SidecarError{Detail: err.Error(), Err: err}
	}
	req.Header.Set("Authorization", "Bearer "+run.token)
	if body != nil {
		req.Header.Set("Content-Type", jsonType)
	}
	req.Header.Set("Accept", jsonType)
	resp, err := run.client.http.Do(req)
	if err != nil {
		return answer{}, &SidecarError{Detail: err.Error(), Err: err}
	}
	defer resp.Body.Close()
	limit := int64(maxAnswer)
	if resp.StatusCode >= 300 {
		limit = maxProblem
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return answer{}, &SidecarError{Detail: "reading the answer: " + err.Error(), Err: err}
	}
	if int64(len(data)) > limit {
		if resp.StatusCode >= 300 {
			data = data[:limit] // a refusal is still a refusal: keep what fits
		} else {
			return answer{}, &SidecarError{Status: resp.StatusCode, Detail: fmt.Sprintf("answer larger than %d bytes", limit)}
		}
	}
	return answer{status: resp.StatusCode, body: data}, nil
}

// object decodes a 200 answer's JSON object into v; anything else is an error.
func (a answer) object(v any) error {
	if a.status != http.StatusOK {
		return refusal(a.status, a.body)
	}
	if err := json.Unmarshal(a.body, v); err != nil {
		return &SidecarError{Status: a.status, Detail: "sidecar sent invalid JSON: " + err.Error()}
	}
	return nil
}

// ErrNotDurable is what WaitForEvent returns outside the gateway, where nothing could
// deliver an event.
var ErrNotDurable = errors.New("durable: cannot wait for events without the gateway: " +
	"this request has no Durable-* headers (send it through a durable route)")
