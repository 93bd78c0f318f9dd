"""Building blocks of Kiln's Grafana dashboards: the data source and query variables, and a
board that lays panels out on Grafana's grid. Used by gen_dashboards.py."""

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
RATE = "$__rate_interval"


def ds_var():
    return {
        "name": "DS_PROMETHEUS",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
    }


def query_var(name, label, query, all_value=".*"):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "includeAll": True,
        "allValue": all_value,
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
    }


class Board:
    """Lays panels out on Grafana's 24-column grid, two or three to a row."""

    def __init__(self, uid, title, description, variables):
        self.uid, self.title, self.description = uid, title, description
        self.variables = variables
        self.panels = []
        self.y = 0
        self.x = 0
        self.row_h = 0

    def row(self, title):
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "id": len(self.panels) + 1,
                "panels": [],
            }
        )
        self.y += 1

    def _newline(self):
        if self.x:
            self.y += self.row_h
            self.x = 0
            self.row_h = 0

    def panel(self, title, description, targets, unit="short", kind="timeseries", w=12, h=8):
        if self.x + w > 24:
            self._newline()
        p = {
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
            "id": len(self.panels) + 1,
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
            "targets": [
                {
                    "datasource": DS,
                    "expr": expr,
                    "legendFormat": legend,
                    "refId": chr(ord("A") + i),
                    **({"format": "table", "instant": True} if kind == "table" else {}),
                }
                for i, (expr, legend) in enumerate(targets)
            ],
        }
        if kind == "table":
            p["options"] = {"showHeader": True}
            p["transformations"] = [
                {
                    "id": "organize",
                    "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}},
                }
            ]
        self.panels.append(p)
        self.x += w
        self.row_h = max(self.row_h, h)

    def json(self):
        return {
            "__inputs": [
                {
                    "name": "DS_PROMETHEUS",
                    "label": "Prometheus",
                    "type": "datasource",
                    "pluginId": "prometheus",
                    "pluginName": "Prometheus",
                }
            ],
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["kiln"],
            "editable": True,
            "graphTooltip": 1,
            "refresh": "30s",
            "schemaVersion": 39,
            "time": {"from": "now-1h", "to": "now"},
            "timezone": "",
            "templating": {"list": self.variables},
            "annotations": {"list": []},
            "links": [],
            "panels": self.panels,
            "version": 1,
        }


def sel(metric, extra=""):
    """`metric{job=~"$job",model=~"$model"<extra>}`"""
    return f'{metric}{{job=~"$job",model=~"$model"{extra}}}'


def quantiles(metric, by):
    return [
        (
            f"histogram_quantile({q}, sum by ({by}, le) (rate({sel(metric + '_bucket')}[{RATE}])))",
            f"p{int(q * 100)} {{{{{by.split(',')[0].strip()}}}}}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def mean(metric, by, legend):
    return (
        f"sum by ({by}) (rate({sel(metric + '_sum')}[{RATE}])) / "
        f"sum by ({by}) (rate({sel(metric + '_count')}[{RATE}]))",
        legend,
    )


