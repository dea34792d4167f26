package infra

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Fprint writes the tree as datacenter → host → containers, each container
// with its image, published ports and volumes.
func Fprint(w io.Writer, t *Tree) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, dc := range t.Datacenters {
		fmt.Fprintf(tw, "%s\n", dc.Name)
		for _, h := range dc.Hosts {
			fmt.Fprintf(tw, "  %s\t%s\n", h.Name, h.File)
			if !h.Parsed {
				fmt.Fprintf(tw, "    (does not parse: see svckit infra check)\n")
				continue
			}
			fmt.Fprintf(tw, "    CONTAINER\tIMAGE\tPORTS\tVOLUMES\n")
			for _, c := range h.Containers {
				img := c.Image
				if img == "" {
					img = "build " + c.Dockerfile
				}
				ports := make([]string, 0, len(c.Ports))
				for _, p := range c.Ports {
					ports = append(ports, p.String())
				}
				vols := make([]string, 0, len(c.Volumes))
				for _, v := range c.Volumes {
					vols = append(vols, v.String())
				}
				fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\n", c.Name, img, orDash(strings.Join(ports, ", ")), orDash(strings.Join(vols, ", ")))
			}
		}
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
