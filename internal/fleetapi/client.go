package fleetapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

// Client speaks fleet's API v1 (to flotilla or to fleet). Create it with
// NewClient; it is safe for concurrent use.
type Client struct {
	base string
	http *http.Client
}

// NewClient returns a client of endpoint (unix:///path, http://host:port or
// https://host:port; tc is used for https).
func NewClient(endpoint string, tc *tls.Config) (*Client, error) {
	base, tr, err := endpointTransport(endpoint, tc)
	if err != nil {
		return nil, err
	}
	return &Client{base: base + "/fleet/v1", http: &http.Client{Transport: tr}}, nil
}

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// StatusError is a non-2xx answer, with fleet's error body.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("fleet API: %d %s: %s", e.Code, http.StatusText(e.Code), e.Message)
}

// Do sends one request (body marshalled as JSON when not nil) and decodes
// a 2xx answer into out (when not nil). It returns the status code.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return 0, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode/100 != 2 {
		var eb ErrorBody
		_ = json.Unmarshal(b, &eb)
		return resp.StatusCode, &StatusError{Code: resp.StatusCode, Message: eb.Error.Message}
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("decode %s %s: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

// Units lists every unit, following nextPageToken.
func (c *Client) Units(ctx context.Context) ([]*Unit, error) {
	var all []*Unit
	tok := ""
	for {
		var p UnitPage
		if _, err := c.Do(ctx, http.MethodGet, "/units"+tokenQuery(tok, nil), nil, &p); err != nil {
			return nil, err
		}
		all = append(all, p.Units...)
		if p.NextPageToken == "" {
			return all, nil
		}
		tok = p.NextPageToken
	}
}

// Unit reads one unit.
func (c *Client) Unit(ctx context.Context, name string) (*Unit, error) {
	var u Unit
	if _, err := c.Do(ctx, http.MethodGet, "/units/"+url.PathEscape(name), nil, &u); err != nil {
		return nil, err
	}
	return &u, nil
}

// SetUnit PUTs u (create, replace or set its desired state) and returns the
// status code (201 or 204).
func (c *Client) SetUnit(ctx context.Context, u *Unit) (int, error) {
	return c.Do(ctx, http.MethodPut, "/units/"+url.PathEscape(u.Name), u, nil)
}

// SetDesiredState sets an existing unit's desired state.
func (c *Client) SetDesiredState(ctx context.Context, name, state string) error {
	_, err := c.SetUnit(ctx, &Unit{Name: name, DesiredState: state})
	return err
}

// DestroyUnit deletes a unit.
func (c *Client) DestroyUnit(ctx context.Context, name string) error {
	_, err := c.Do(ctx, http.MethodDelete, "/units/"+url.PathEscape(name), nil, nil)
	return err
}

// UnitStates lists unit states, filtered by machine and unit when not "",
// following nextPageToken.
func (c *Client) UnitStates(ctx context.Context, machineID, unitName string) ([]*UnitState, error) {
	q := url.Values{}
	if machineID != "" {
		q.Set("machineID", machineID)
	}
	if unitName != "" {
		q.Set("unitName", unitName)
	}
	var all []*UnitState
	tok := ""
	for {
		var p UnitStatePage
		if _, err := c.Do(ctx, http.MethodGet, "/state"+tokenQuery(tok, q), nil, &p); err != nil {
			return nil, err
		}
		all = append(all, p.States...)
		if p.NextPageToken == "" {
			return all, nil
		}
		tok = p.NextPageToken
	}
}

// Machines lists every machine, following nextPageToken.
func (c *Client) Machines(ctx context.Context) ([]*Machine, error) {
	var all []*Machine
	tok := ""
	for {
		var p MachinePage
		if _, err := c.Do(ctx, http.MethodGet, "/machines"+tokenQuery(tok, nil), nil, &p); err != nil {
			return nil, err
		}
		all = append(all, p.Machines...)
		if p.NextPageToken == "" {
			return all, nil
		}
		tok = p.NextPageToken
	}
}

// PatchMetadata sends metadata operations on /machines.
func (c *Client) PatchMetadata(ctx context.Context, ops []MetadataOp) error {
	_, err := c.Do(ctx, http.MethodPatch, "/machines", ops, nil)
	return err
}

func tokenQuery(tok string, q url.Values) string {
	v := url.Values{}
	for k, vs := range q {
		v[k] = vs
	}
	if tok != "" {
		v.Set("nextPageToken", tok)
	}
	if len(v) == 0 {
		return ""
	}
	return "?" + v.Encode()
}
