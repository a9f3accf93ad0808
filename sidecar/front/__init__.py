"""A front for pass-through traffic: a reverse proxy's configuration, derived from the sidecar's
own route table, that sends the sidecar only what it synchronises (and the long-polls and
status reads it answers) and everything else straight to the API, so pass-through traffic
costs no Python at all (`sidecar export nginx`).

    plan     what goes where: the route table's rules in order, the sidecar's own paths and
             long-polls, the upstreams, the timeouts, independent of any proxy's syntax
    nginx    the plan as an nginx `http`-level include (upstreams, maps, one server)
"""

from .nginx import FrontOptions, option_problems, render_nginx
from .plan import FrontPlan, plan_front

__all__ = ["FrontOptions", "FrontPlan", "option_problems", "plan_front", "render_nginx"]
