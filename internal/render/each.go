package render

import (
	"context"
	"errors"
	"log/slog"

	"github.com/flotilla/flotilla/resources"
	"github.com/flotilla/flotilla/template"
)

// outputs lists the outputs of e, a resource with several (dest_dir), for
// the snapshot st. Keys whose names cannot be outputs are logged.
func outputs(e *entry, st *template.Store, log *slog.Logger) []resources.Output {
	outs, errs := e.res.Outputs(st.Keys(), func(k string) string { v, _ := st.Get(k); return v })
	for _, err := range errs {
		log.Error("output skipped", "resource", e.res.Name, "err", err)
	}
	return outs
}

// execEach renders a resource with several outputs: the template once per
// output, with the output's name, key and value as its dot. Outputs whose
// key went away are removed; the job changed if any file did.
func (r *runner) execEach(ctx context.Context, j job, log *slog.Logger, opts resources.ApplyOptions) result {
	outs := outputs(j.e, j.store, log)
	changed, err := j.e.res.ApplyEach(ctx, outs, func(o resources.Output) ([]byte, error) {
		return j.e.tmpl.RenderData(j.store, o.Data(j.e.res.Per))
	}, opts)
	return result{job: j, changed: changed, err: err}
}

// renderCheck renders e against its snapshot in memory, every output of it
// when it has several, and returns the first error.
func (r *runner) renderCheck(e *entry) error {
	if e.res.Per == resources.PerNone {
		_, err := e.tmpl.Render(e.store)
		return err
	}
	var errs []error
	for _, o := range outputs(e, e.store, r.log) {
		if _, err := e.tmpl.RenderData(e.store, o.Data(e.res.Per)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
