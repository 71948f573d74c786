/* saga--0.3--0.4.sql: bridges between orchestration and choreography, diagrams, topics */

\echo Use "ALTER EXTENSION saga UPDATE TO '0.4'" to load this file. \quit

