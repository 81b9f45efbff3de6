-- oarcloud: push every OAR job state transition to the controller.
--
-- OAR appends one row to job_state_logs per transition (Waiting, toLaunch, Launching,
-- Running, Finishing, Terminated, Error...). An AFTER INSERT trigger sends it on the
-- channel `oarcloud_job_state` as JSON {log_id, job_id, state, date}. Notifications sent
-- while nobody listens are lost: the controller replays
--   SELECT ... FROM job_state_logs WHERE job_state_log_id > <last seen>
-- after every (re)connect.
--
-- The function swallows its own errors: it must NEVER break OAR's transaction.
-- Idempotent (CREATE OR REPLACE, PostgreSQL >= 14): apply it as often as you like.
--   psql -d oar -v ro_user=oar_ro -f db-trigger.sql
-- Columns checked on OAR 2.5.9 (`\d job_state_logs`): job_state_log_id bigserial,
-- job_id integer, job_state varchar(16), date_start integer, date_stop integer.

CREATE OR REPLACE FUNCTION oarcloud_notify_job_state() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  BEGIN
    PERFORM pg_notify('oarcloud_job_state',
      json_build_object('log_id', NEW.job_state_log_id,
                        'job_id', NEW.job_id,
                        'state',  NEW.job_state,
                        'date',   NEW.date_start)::text);
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'oarcloud_notify_job_state: % (%)', SQLERRM, SQLSTATE;
  END;
  RETURN NULL;  -- AFTER trigger: the return value is ignored
END;
$$;

CREATE OR REPLACE TRIGGER oarcloud_job_state_notify
  AFTER INSERT ON job_state_logs
  FOR EACH ROW EXECUTE FUNCTION oarcloud_notify_job_state();

-- oardel (and a walltime kill) first inserts the job into frag_jobs; OAR then needs 2-5 s to
-- kill the job and run its epilogues. The controller takes this notification on channel
-- `oarcloud_job_frag` ({job_id}) as a hint to tear the job's instances down at once. Lost
-- hints cost nothing but time: the state events and the epilogue still end the job.
CREATE OR REPLACE FUNCTION oarcloud_notify_job_frag() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  BEGIN
    PERFORM pg_notify('oarcloud_job_frag', json_build_object('job_id', NEW.frag_id_job)::text);
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'oarcloud_notify_job_frag: % (%)', SQLERRM, SQLSTATE;
  END;
  RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER oarcloud_job_frag_notify
  AFTER INSERT ON frag_jobs
  FOR EACH ROW EXECUTE FUNCTION oarcloud_notify_job_frag();

-- What the controller reads, as the read-only OAR user (psql variable ro_user).
\if :{?ro_user}
GRANT SELECT ON jobs, job_state_logs, job_types, assigned_resources, resources,
                moldable_job_descriptions TO :"ro_user";
\endif
