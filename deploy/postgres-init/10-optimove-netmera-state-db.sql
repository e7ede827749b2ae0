-- The project's state database, a second database on docker-compose.yaml's postgres service (Airflow's metadata
-- database is "airflow"; Airflow 3 forbids tasks from touching it). Every Airflow process reaches this one through
-- OPTIMOVE_NETMERA_STATE_DB_URL=postgresql+psycopg2://airflow:airflow@postgres/optimove_netmera.
--
-- The postgres image runs the files in /docker-entrypoint-initdb.d only when it initialises an EMPTY data volume.
-- On a volume made before this file existed, create the database once by hand:
--   docker compose exec postgres createdb -U airflow optimove_netmera
-- airflow-init then creates its tables (python -m optimove_netmera.store upgrade).
CREATE DATABASE optimove_netmera OWNER airflow;
