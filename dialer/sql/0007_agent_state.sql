-- Shared agent state (issue 18): what the providers say about agents lives here, not in
-- each instance's memory, so every instance behind a load balancer paces on the same
-- ready-agent count whichever instance an event or a poll reached.

-- The last known status of each agent, per source (ringme: agent events). The newest event
-- wins: an event moves the row only when its (event_at, seq) is past the row's, so a late
-- event never overrides a newer one and a repeat changes nothing.
CREATE SEQUENCE agent_event_seq;

CREATE TABLE agent_status (
    source      text NOT NULL,
    agent       text NOT NULL,          -- our username
    status      text NOT NULL,
    raw_id      text NOT NULL DEFAULT '',  -- the provider's id for the agent
    event_at    timestamptz NOT NULL,   -- the event's time (else when it reached an instance)
    seq         bigint NOT NULL,        -- arrival order at the database: breaks ties of event_at
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (source, agent)
);

-- What a source last said about a target: PortSIP's ready agents and queue depth, ringme's
-- queue counters, and when it last spoke. target '' is the source as a whole (ringme
-- events are not per target).
CREATE TABLE agent_views (
    source      text NOT NULL,
    target      text NOT NULL,
    ready       text[],                 -- NULL: this row says nothing about agents
    depth       integer,
    counters    jsonb,
    heard_at    timestamptz,
    PRIMARY KEY (source, target)
);

-- When each provider poll last ran, and by which instance: with several instances a poll
-- runs once per interval (under an advisory lock), its result read by all.
CREATE TABLE provider_polls (
    source      text PRIMARY KEY,
    polled_at   timestamptz NOT NULL,
    polled_by   text NOT NULL
);
