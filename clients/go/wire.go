package durable

// The step protocol on the wire: header names, the Durable-Steps codec, step paths,
// body shapes and bounds (SPEC.md §2-§4.9). Pure: no I/O here.

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Request headers the gateway sends with every attempt of a durable route.
const (
	HeaderRunID   = "Durable-Run-Id"
	HeaderAttempt = "Durable-Attempt"
	HeaderSidecar = "Durable-Sidecar"
	HeaderToken   = "Durable-Token"
	HeaderSteps   = "Durable-Steps"
	// HeaderRetry on a response, with the value "no", makes a failure final.
	HeaderRetry = "Durable-Retry"
)

// Bounds of the protocol (SPEC.md §4.9); checked here before any call, so a bad
// argument is a clear error rather than a 400 from the sidecar.
const (
	MaxStepID     = 256                       // characters of a step id
	MaxDuration   = 10 * 365 * 24 * time.Hour // a sleep, a wait's timeout or lookback
	MaxEventName  = 256                       // characters of an event name
	MaxMatchKeys  = 32                        // paths in a wait's match
	MaxMatchPath  = 256                       // characters of one match path
	MaxMatchValue = 4096                      // bytes of one match value's JSON
)

const (
	stepsFetch    = "fetch"                         // Durable-Steps: GET {base}/steps
	stepsPath     = "/steps"                        // under the sidecar URL
	syncQuery     = "?durable=sync"                 // a PUT answered once committed
	jsonType      = "application/json"              // sidecar request bodies
	problemStale  = "stale-attempt"                 // problem slug: a newer attempt runs
	rfc3339Millis = "2006-01-02T15:04:05.000Z07:00" // how the gateway writes timestamps
	errorMaxChars = 2000                            // the gateway keeps no more of a message
	unreserved    = "-._~"                          // besides ASCII letters and digits
	hexDigits     = "0123456789ABCDEF"              // percent-encoding
	maxAnswer     = 64 << 20                        // bytes of a successful sidecar answer
	maxProblem    = 64 << 10                        // bytes of a refusal's body
)

// errMalformedSteps is why a Durable-Steps value could not be read.
var errMalformedSteps = errors.New("malformed " + HeaderSteps + " header")

// decodeSteps reads a Durable-Steps value into {step_id: output}. A nil map (and no
// error) means "fetch": the steps are too many for a header and must be read from the
// sidecar. Accepts the value with or without '=' padding, ignoring surrounding spaces.
func decodeSteps(value string) (map[string]json.RawMessage, error) {
	value = strings.TrimSpace(value)
	if value == "" {
		return map[string]json.RawMessage{}, nil
	}
	if value == stepsFetch {
		return nil, nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(value, "="))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errMalformedSteps, err)
	}
	var steps map[string]json.RawMessage
	if err := json.Unmarshal(raw, &steps); err != nil || steps == nil {
		return nil, fmt.Errorf("%w: not a JSON object", errMalformedSteps)
	}
	return steps, nil
}

// encodeSteps is decodeSteps' inverse (without the fetch threshold): for tests and tools.
func encodeSteps(steps map[string]json.RawMessage) (string, error) {
	raw, err := json.Marshal(steps)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(raw), nil
}

// stepSegment is a step id as one URL path segment: every UTF-8 byte but the
// unreserved characters percent-encoded (SPEC.md §4), so "/" and ":" never split it.
func stepSegment(id string) string {
	var b strings.Builder
	b.Grow(len(id))
	for i := 0; i < len(id); i++ {
		c := id[i]
		if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' ||
			strings.IndexByte(unreserved, c) >= 0 {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	return b.String()
}

// checkStepID refuses what the sidecar would: empty, too long, U+0000, not UTF-8.
func checkStepID(id string) error {
	switch {
	case id == "":
		return errors.New("durable: a step id must not be empty")
	case !utf8.ValidString(id):
		return fmt.Errorf("durable: step id %q is not valid UTF-8", id)
	case utf8.RuneCountInString(id) > MaxStepID:
		return fmt.Errorf("durable: step id longer than %d characters: %.40q…", MaxStepID, id)
	case strings.IndexByte(id, 0) >= 0:
		return fmt.Errorf("durable: step id %q holds U+0000", id)
	}
	return nil
}

// checkEventName refuses what the sidecar would: 1 to MaxEventName characters, no U+0000.
func checkEventName(name string) error {
	n := utf8.RuneCountInString(name)
	if n == 0 || n > MaxEventName || strings.IndexByte(name, 0) >= 0 || !utf8.ValidString(name) {
		return fmt.Errorf("durable: an event name is 1 to %d characters of UTF-8 without U+0000, not %.40q", MaxEventName, name)
	}
	return nil
}

// checkMatch checks a wait's match against SPEC.md §4.6's bounds and returns it as JSON.
func checkMatch(match map[string]any) (json.RawMessage, error) {
	if len(match) > MaxMatchKeys {
		return nil, fmt.Errorf("durable: a match has at most %d paths, not %d", MaxMatchKeys, len(match))
	}
	for path, value := range match {
		if path == "" || strings.HasPrefix(path, ".") || strings.HasSuffix(path, ".") || strings.Contains(path, "..") {
			return nil, fmt.Errorf("durable: a match key is a dotted path like data.order_id, not %q", path)
		}
		if utf8.RuneCountInString(path) > MaxMatchPath {
			return nil, fmt.Errorf("durable: a match path is at most %d characters", MaxMatchPath)
		}
		raw, err := json.Marshal(value)
		if err != nil {
			return nil, fmt.Errorf("durable: match value of %q is not JSON: %w", path, err)
		}
		if len(raw) > MaxMatchValue {
			return nil, fmt.Errorf("durable: match value of %q is %d bytes of JSON: at most %d", path, len(raw), MaxMatchValue)
		}
	}
	return json.Marshal(match)
}

// checkDuration refuses a negative duration or one past MaxDuration.
func checkDuration(what string, d time.Duration) error {
	if d < 0 || d > MaxDuration {
		return fmt.Errorf("durable: %s %v is out of range: 0 to %v (10 years)", what, d, MaxDuration)
	}
	return nil
}

// seconds writes a duration as a JSON number of seconds, exactly (no exponent).
func seconds(d time.Duration) json.RawMessage {
	return json.RawMessage(strconv.FormatFloat(d.Seconds(), 'f', -1, 64))
}

// stopwatch times one try of a step's work for its PUT (SPEC.md §4.3): the wall clock
// at the start, and the duration on the monotonic clock (time.Since uses it), so a
// clock step cannot skew it.
type stopwatch struct {
	start time.Time
}

func startWatch() stopwatch { return stopwatch{start: time.Now()} }

// timing is what a step's PUT says about its work: Unix seconds to the microsecond,
// and milliseconds cut to the microsecond.
type timing struct {
	startedAt, durationMs float64
}

// stop reads the watch; taken when the work ends, so the PUT itself is not counted.
func (w stopwatch) stop() timing {
	return timing{
		startedAt:  float64(w.start.UnixMicro()) / 1e6,
		durationMs: float64(time.Since(w.start).Microseconds()) / 1000,
	}
}

// putBody is the body of PUT {base}/steps/{id}: an output or an error, with timing.
type putBody struct {
	Output     json.RawMessage `json:"output,omitempty"`
	Error      *putError       `json:"error,omitempty"`
	StartedAt  float64         `json:"started_at"`
	DurationMs float64         `json:"duration_ms"`
}

type putError struct {
	Message string `json:"message"`
}

func outputBody(output json.RawMessage, t timing) []byte {
	body := putBody{Output: output, StartedAt: t.startedAt, DurationMs: t.durationMs}
	raw, _ := json.Marshal(body) // output is valid JSON already; floats are finite
	return raw
}

// errorBody reports a failed try; the message is cut where the gateway would cut it.
func errorBody(err error, t timing) []byte {
	message := err.Error()
	if message == "" {
		message = fmt.Sprintf("%T", err)
	}
	if utf8.RuneCountInString(message) > errorMaxChars {
		message = string([]rune(message)[:errorMaxChars])
	}
	body := putBody{Error: &putError{Message: message}, StartedAt: t.startedAt, DurationMs: t.durationMs}
	raw, _ := json.Marshal(body)
	return raw
}

// formatTime writes a time as the gateway does: RFC 3339 in UTC with milliseconds.
func formatTime(t time.Time) string {
	return t.UTC().Format(rfc3339Millis)
}

// problemSlug is the last path segment of a problem's type URI.
func problemSlug(typeURI string) string {
	typeURI = strings.TrimRight(typeURI, "/")
	return typeURI[strings.LastIndexByte(typeURI, '/')+1:]
}

// isJSONNull says whether a raw JSON value is null (a timed-out wait's output).
func isJSONNull(raw json.RawMessage) bool {
	return len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null"
}
